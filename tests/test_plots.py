"""The study plot: what a researcher looks at first, readable (no label covers another)."""

import itertools

from test_validation import NAMES, spec, trade_off

from optimizer.loop import StudyRunner
from optimizer.records import stored_front, trial_rows
from optimizer.verdict import study_verdict
from service.studies.plots import figure_study, plot_study

from fakes import NoisyPool


def texts(fig):
    """Every label drawn: titles, axis labels, legend entries and the tick labels inside each
    axis' view (matplotlib keeps a few beyond it, never drawn)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = [fig._suptitle]
    for ax in fig.axes:
        found += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):
            found += [tick.label1 for tick in axis._update_ticks()]
        if ax.get_legend() is not None:
            found += ax.get_legend().get_texts()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in found if t.get_visible() and t.get_text().strip()]


def test_study_plot_has_every_panel_and_no_overlapping_labels(tmp_path):
    runner = StudyRunner(spec(tmp_path, "plot", normalize="expert", baselines=True, n_trials=20),
                         NoisyPool(NAMES, trade_off, seed=2), progress=False)
    runner.run()
    rows, front = trial_rows(runner.study), stored_front(runner.study)
    verdict = study_verdict(runner.study, rows)
    fig = figure_study(rows, front, "plot", verdict["recommended"])
    labels = list(texts(fig))
    words = {w for w, _ in labels}
    assert {"per task, 95% intervals", "search progress", "mean normalized score: search vs validation"} <= words
    assert f"recommended, trial {verdict['recommended']}" in words and any(w.startswith("best single (") for w in words)
    assert "base model, trial 3" in words and "uniform average, trial 4" in words
    overlaps = [(a, b) for (a, ea), (b, eb) in itertools.combinations(labels, 2) if ea.overlaps(eb)]
    assert not overlaps, overlaps
    # Every panel drew its data: bars per group and task (+ mean), the curve, the scatter.
    bars_ax, curve_ax, scatter_ax = fig.axes
    assert len(bars_ax.patches) == 4 * (3 + 1)
    assert curve_ax.lines and scatter_ax.collections
    out = plot_study(rows, front, tmp_path / "front.png", "plot", verdict["pick"])
    assert out.stat().st_size > 20_000
