"""What `mergeopt --help` shows beyond the arguments: defaults, examples, and argument types
that refuse a bad value before any work starts (the demo trains its pool first otherwise)."""

from __future__ import annotations

import argparse
from pathlib import Path

from contract.methods import METHOD_INFO
from optimizer.spec import DEFAULT_STORAGE


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended where there is one worth showing (not None, not a flag's False);
    descriptions and epilogs kept as written (they hold examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def examples(*lines: tuple[str, str]) -> str:
    """An epilog: each (command, what it does), aligned."""
    width = max(len(cmd) for cmd, _ in lines)
    return "examples:\n" + "\n".join(f"  {cmd.ljust(width)}  # {what}" for cmd, what in lines)


MAIN = examples(
    ("mergeopt demo", "tiny pool + CMA-ES study on the CPU (minutes), prints the front"),
    ("mergeopt init study.yaml", "a commented study spec to edit"),
    ("mergeopt run study.yaml", "run it to its budget (re-running resumes)"),
    ("mergeopt front study.yaml", "its Pareto front on validation documents"),
    ("mergeopt export study.yaml 42 merged/", "trial 42 as a HF checkpoint + mergekit_config.yml"),
    ("mergeopt merge mergekit.yml merged/", "one merge from a mergekit YAML"),
    ("mergeopt serve --db postgresql+psycopg://u@host/db", "the REST API and dashboard"),
)
DEMO = examples(
    ("mergeopt demo", "build (or reuse) the pool in ./mergeopt-demo and run 80 trials"),
    ("mergeopt demo --trials 40 -q", "a shorter study, no progress bars"),
    ("mergeopt demo --fresh", "drop the stored demo study and start over (the pool is reused)"),
)
RUN = examples(
    ("mergeopt run study.yaml", f"storage from the spec (default {DEFAULT_STORAGE} next to it)"),
    ("mergeopt run study.yaml --storage sqlite:////data/studies.db", "another database"),
)
FRONT = examples(
    ("mergeopt front study.yaml", "the study the YAML names, in its storage"),
    ("mergeopt front demo --storage sqlite:///mergeopt-demo/demo.db", "a study by name"),
    ("mergeopt front study.yaml --split search --json", "search documents' front, as JSON"),
)
EXPORT = examples(
    ("mergeopt export study.yaml 42 merged/", "trial 42 (numbers: `mergeopt front`)"),
    ("mergekit-yaml merged/mergekit_config.yml again/", "mergekit reproduces it"),
)
MERGE = examples(
    ("mergeopt merge mergekit.yml merged/", ", ".join(METHOD_INFO)),
    ("mergeopt merge mergekit.yml merged/ --device cuda:0", "merge on a GPU"),
)


def demo_trials(text: str) -> int:
    """--trials: a whole number that covers the demo's set-up trials and one search trial."""
    from service.cli.demo import min_demo_trials

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    low = min_demo_trials()
    if n < low:
        raise argparse.ArgumentTypeError(
            f"{n} is too few: the demo needs at least {low} (its set-up trials: each checkpoint, the base, "
            "the merge baselines and greedy soup; then at least one search trial)")
    return n


def workdir(text: str) -> str:
    """--workdir: a folder, or a path to create one at (a file there is refused up front)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text
