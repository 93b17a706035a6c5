"""The front plot: every trial on two chosen task axes, baselines marked, the front joined."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from optimizer.records import TrialRow  # noqa: E402


def plot_front(rows: list[TrialRow], front: dict, out: str | Path, title: str = "") -> Path:
    tasks: list[str] = front["tasks"]
    done = [r for r in rows if r.state == "COMPLETE" and r.normalized]
    on_front = set(front["trials"])
    pairs = [(tasks[i], tasks[j]) for i in range(len(tasks)) for j in range(i + 1, len(tasks))] or [(tasks[0], tasks[0])]
    pairs = pairs[:6]
    cols = min(3, len(pairs))
    rows_n = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.4 * rows_n), squeeze=False)
    for ax, (tx, ty) in zip(axes.flat, pairs, strict=False):
        search = [r for r in done if r.kind == "search"]
        ax.scatter([r.normalized[tx] for r in search], [r.normalized[ty] for r in search],
                   s=18, c="#9aa5b1", label="search trials", zorder=2)
        for r in (r for r in done if r.kind == "baseline"):
            single = r.label.startswith("checkpoint:")
            ax.scatter(r.normalized[tx], r.normalized[ty], marker="s" if single else "D", s=46,
                       edgecolors="black", c="#f2b134" if single else "#59a14f", zorder=3)
            ax.annotate(r.label.removeprefix("checkpoint:"), (r.normalized[tx], r.normalized[ty]),
                        fontsize=7, xytext=(4, 3), textcoords="offset points")
        pf = sorted((r for r in done if r.number in on_front), key=lambda r: r.normalized[tx])
        ax.scatter([r.normalized[tx] for r in pf], [r.normalized[ty] for r in pf], s=60,
                   facecolors="none", edgecolors="#e15759", linewidths=1.6, label="Pareto front", zorder=4)
        ax.set_xlabel(f"{tx} (normalized)")
        ax.set_ylabel(f"{ty} (normalized)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], marker="o", ls="", c="#9aa5b1", label="search trial"),
        plt.Line2D([], [], marker="s", ls="", c="#f2b134", mec="black", label="single checkpoint"),
        plt.Line2D([], [], marker="D", ls="", c="#59a14f", mec="black", label="merge baseline"),
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec="#e15759", label="Pareto front"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title or f"Pareto front (hypervolume {front['hypervolume']:.3f})")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
