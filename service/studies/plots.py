"""The study plot a researcher looks at first, all on validation documents with 95% intervals:

1. per task, the recommended merge vs the uniform average vs the best single checkpoint vs
   the base (bars with intervals);
2. the best-so-far curve of the search objective, with validated trials' validation scores;
3. search vs validation objective of every validated trial (the gap is the winner's curse),
   the validation front marked.

Labels live in legends and axes only (no annotations next to points), so none overlap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from optimizer.attrs import (  # noqa: E402
    BASE_LABEL,
    KIND_BASELINE,
    KIND_SEARCH,
    ROLE_BASE,
    ROLE_UNIFORM,
    UNIFORM,
    is_checkpoint,
)
from optimizer.recommend import best_on_search, shown  # noqa: E402
from optimizer.records import TrialRow  # noqa: E402

COLORS = {"merge": "#e15759", "uniform": "#59a14f", "single": "#f2b134", "base": "#76b7b2"}


def _validated(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.state == "COMPLETE" and r.validation and "objective" in r.validation]


def _bars(ax, rows: list[TrialRow], tasks: list[str], pick: int | None) -> None:
    ok = _validated(rows)
    by = {r.number: r for r in ok}
    singles = [r for r in ok if is_checkpoint(r.label)]
    best_single = best_on_search(singles)
    groups = [("merge", by.get(pick), "recommended"),
              ("uniform", next((r for r in ok if r.label == UNIFORM), None), ROLE_UNIFORM),
              ("single", best_single, f"best single ({shown(best_single.label)})" if best_single else ""),
              ("base", next((r for r in ok if r.label == BASE_LABEL), None), ROLE_BASE)]
    groups = [g for g in groups if g[1] is not None]
    names = [*tasks, "mean"]
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(names))
    for i, (key, r, label) in enumerate(groups):
        v = r.validation
        cells = [v["normalized"][t] for t in tasks] + [v["objective"]]
        mid = np.array([c["value"] for c in cells])
        err = np.array([[c["value"] - c["lo"] for c in cells], [c["hi"] - c["value"] for c in cells]])
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, mid, width, yerr=np.clip(err, 0, None), capsize=2,
               color=COLORS[key], edgecolor="black", linewidth=0.5, label=f"{label}, trial {r.number}")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("normalized score (validation)")
    ax.set_title("per task, 95% intervals")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def _curve(ax, rows: list[TrialRow]) -> None:
    done = sorted((r for r in rows if r.state == "COMPLETE" and r.objective is not None), key=lambda r: r.number)
    if not done:
        return
    ax.step([r.number for r in done], np.maximum.accumulate([r.objective for r in done]), where="post",
            color="#4e79a7", label="best so far (search documents)")
    ok = [r for r in _validated(rows) if r.kind == KIND_SEARCH]
    ax.errorbar([r.number for r in ok], [r.validation["objective"]["value"] for r in ok],
                yerr=np.clip([[r.validation["objective"]["value"] - r.validation["objective"]["lo"] for r in ok],
                              [r.validation["objective"]["hi"] - r.validation["objective"]["value"] for r in ok]], 0, None),
                fmt="o", ms=3, color=COLORS["merge"], elinewidth=0.8, label="validated trials (validation)")
    ax.set_xlim(-0.5, done[-1].number + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("mean normalized score")
    ax.set_title("search progress")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def _curse(ax, rows: list[TrialRow], front: dict) -> None:
    ok = _validated(rows)
    if not ok:
        return
    on = set(front.get("trials", [])) if front.get("split") == "validation" else set()
    for kind, marker, color, label in ((KIND_SEARCH, "o", "#9aa5b1", "search trial"),
                                       (KIND_BASELINE, "s", COLORS["single"], "baseline")):
        pts = [r for r in ok if r.kind == kind]
        ax.errorbar([r.objective for r in pts], [r.validation["objective"]["value"] for r in pts],
                    yerr=np.clip([[r.validation["objective"]["value"] - r.validation["objective"]["lo"] for r in pts],
                                  [r.validation["objective"]["hi"] - r.validation["objective"]["value"] for r in pts]], 0, None),
                    fmt=marker, ms=4, color=color, elinewidth=0.6, label=label)
    fr = [r for r in ok if r.number in on]
    ax.scatter([r.objective for r in fr], [r.validation["objective"]["value"] for r in fr], s=80,
               facecolors="none", edgecolors=COLORS["merge"], linewidths=1.4, label="validation front", zorder=4)
    lo = min(min(r.objective for r in ok), min(r.validation["objective"]["lo"] for r in ok))
    hi = max(max(r.objective for r in ok), max(r.validation["objective"]["hi"] for r in ok))
    ax.plot([lo, hi], [lo, hi], ls="--", c="grey", lw=0.8, label="search = validation")
    ax.set_xlabel("search documents")
    ax.set_ylabel("validation documents")
    ax.set_title("mean normalized score: search vs validation")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def figure_study(rows: list[TrialRow], front: dict, title: str = "", pick: int | None = None):
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8))
    _bars(axes[0], rows, front["tasks"], pick)
    _curve(axes[1], rows)
    _curse(axes[2], rows, front)
    fig.suptitle(title or f"hypervolume {front['hypervolume']:.3f}")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_study(rows: list[TrialRow], front: dict, out: str | Path, title: str = "", pick: int | None = None) -> Path:
    fig = figure_study(rows, front, title, pick)
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
