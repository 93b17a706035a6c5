"""Greedy soup (Wortsman et al. 2022, "Model soups"): the seed paper's second baseline beside
the uniform average. Checkpoints are taken best first (by their search objective); each joins
the soup when the uniform average of the soup with it scores at least as well as the soup
without it. Every soup tried is an evaluation, recorded as a baseline trial. Its steps are
sequential by nature: each depends on whether the one before joined."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from contract.merge import MergeSpec
from optimizer.attrs import checkpoint_label, soup_label
from optimizer.baselines import Baseline


def soup_candidate(names: list[str], members: list[str]) -> MergeSpec:
    return MergeSpec(method="linear", weights={n: float(n in members) for n in names}, normalize=True)


def greedy_soup(ranked: list[tuple[str, float]], score: Callable[[str, list[str]], float | None]) -> list[str]:
    """``ranked``: (checkpoint, its objective) pairs; ``score(added, members)`` evaluates the
    soup ``members`` (the last one just added) and returns its objective, or None when it could
    not (failed, or no budget left: then the soup stops growing). Returns the final soup."""
    order = sorted(ranked, key=lambda p: -p[1])
    soup, best = [order[0][0]], order[0][1]
    for name, _ in order[1:]:
        value = score(name, [*soup, name])
        if value is None:
            continue
        if value >= best:
            soup, best = [*soup, name], value
    return soup


def plan(names: list[str], results: Mapping[str, float | None], slots: int) -> tuple[list[Baseline], Baseline | None]:
    """Greedy soup replayed over what is stored, so that any process can take its next step:
    ``results`` maps the labels evaluated so far ("checkpoint:NAME" for each checkpoint, then
    soups) to their objective (None: failed); ``slots``: how many soups may still become trials
    (the budget; a failed soup takes none). Returns the soups evaluated so far, in order, and
    the next soup to evaluate (None once the soup is complete)."""
    tried: list[Baseline] = []
    pending: list[Baseline] = []

    def score(added: str, members: list[str]) -> float | None:
        label = soup_label(added)
        if pending:
            return None  # the steps after an unevaluated one wait for it
        if label in results:
            tried.append(Baseline(label, soup_candidate(names, members)))
            return results[label]
        if sum(results[t.label] is not None for t in tried) < slots:
            pending.append(Baseline(label, soup_candidate(names, members)))
        return None

    greedy_soup([(n, results[checkpoint_label(n)]) for n in names], score)
    return tried, (pending[0] if pending else None)
