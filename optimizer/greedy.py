"""Greedy soup (Wortsman et al. 2022, "Model soups"): the seed paper's second baseline beside
the uniform average. Checkpoints are taken best first (by their search objective); each joins
the soup when the uniform average of the soup with it scores at least as well as the soup
without it. Every soup tried is an evaluation, recorded as a baseline trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from optimizer.baselines import Baseline
from optimizer.candidate import Candidate
from optimizer.records import T_LABEL, T_OBJ

if TYPE_CHECKING:
    from optimizer.loop import StudyRunner

LABEL = "greedy soup +{}"


def soup_candidate(names: list[str], members: list[str]) -> Candidate:
    return Candidate(method="linear", weights={n: float(n in members) for n in names}, normalize=True)


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


def run(runner: StudyRunner) -> list[str]:
    """The study's greedy soup; resumable: a soup already tried is read back, not evaluated."""
    names = runner.spec.checkpoint_names
    done = {t.user_attrs.get(T_LABEL): t.user_attrs.get(T_OBJ) for t in runner._rows()}

    def score(added: str, members: list[str]) -> float | None:
        label = LABEL.format(added)
        if label not in done:
            if runner._budget_left() <= 0:
                return None
            done[label] = runner._run_baseline(Baseline(label, soup_candidate(names, members)))
        return done[label]

    return greedy_soup([(n, done[f"checkpoint:{n}"]) for n in names], score)
