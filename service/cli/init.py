"""`mergeopt init [PATH]`: a commented study YAML a newcomer edits instead of starting from a
blank page. The template is parsed by the spec parser in the tests, so it cannot rot."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from contract.methods import METHOD_INFO
from optimizer.spec import DEFAULT_STORAGE, NAME_PATTERN

TEMPLATE = """\
# A mergeopt study: which checkpoints to merge, what to score the merges on, how to search.
# Edit the pool and the suite, then:  mergeopt run {path}   (re-running resumes)
# Relative paths (and a relative SQLite file) are resolved against this file's folder.
name: {name}                         # letters, digits, _ . - ; names the study in its storage

pool:
  # Hugging Face folders (config.json + safetensors) of ONE architecture and tokenizer.
  base: models/base                  # their common base: needed by task_arithmetic / ties / dare_*
                                     # and by held_out tasks (delete it for linear merges without one)
  checkpoints:                       # two or more; name: what the front and the weights call it
    - {{name: code, path: models/ckpt_code}}
    - {{name: chat, path: models/ckpt_chat}}

suite:
  # lm-eval tasks. include_path: a folder of lm-eval task YAMLs over local files (offline);
  # delete it to use lm-eval's built-in tasks (hellaswag, arc_easy, ...: downloaded once).
  include_path: tasks
  tasks:
    # split: held_in (a skill some checkpoint was trained for: score / the best single checkpoint's)
    #     or held_out (generalization: score / the base's). metric: "NAME,FILTER" as lm-eval names it.
    # Optional per task: weight (objective: weighted), num_fewshot, higher_is_better, normalize.
    - {{task: my_code_task, metric: "acc,none", split: held_in}}
    - {{task: my_chat_task, metric: "acc,none", split: held_in}}
    - {{task: my_other_task, metric: "acc,none", split: held_out}}
  limit: 200                         # documents per task and split (optional: fewer is faster, noisier)
  validation: 0.4                    # share of each task's documents the search never sees: every
                                     # reported score is on them, with a 95% interval
  batch_size: 32

search:
  method: linear                     # {methods}
  sampler: cmaes                     # cmaes | nsga2 | tpe | gp | random
  objective: mean                    # what cmaes maximizes: mean | weighted (of normalized scores)
  n_trials: 60                       # every trial: each checkpoint, the base, the baselines, the search
  baselines: true                    # uniform average, task arithmetic, TIES, DARE-TIES, greedy soup
  seed: 0                            # same seed, same spec: the same trials

storage: {storage}       # or postgresql+psycopg://user@host/db (several workers)
device: auto                         # auto (cuda when available) | cpu | cuda:N | mps
"""


def render(path: str) -> str:
    stem = Path(path).stem if path != "-" else ""
    name = stem if re.fullmatch(NAME_PATTERN, stem) and stem != "study" else "my-study"
    return TEMPLATE.format(path="STUDY.yaml" if path == "-" else path, name=name, storage=DEFAULT_STORAGE,
                           methods=" | ".join(METHOD_INFO))


def cmd_init(args: argparse.Namespace) -> int:
    text = render(args.path)
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the YAML file to write, e.g. {path / 'study.yaml'}")
    try:
        with path.open("w" if args.force else "x") as fh:
            fh.write(text)
    except FileExistsError:
        raise FileExistsError(f"{path} exists: pass --force to overwrite it, or another PATH") from None
    print(f"wrote {path}: edit its pool and suite, then `mergeopt run {path}`")
    return 0


def add_parser(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter], epilog: str) -> None:
    s = sub.add_parser("init", help="write a commented study YAML to edit (then `mergeopt run` it)",
                       description="Write a commented study spec: pool, suite, search, storage.",
                       formatter_class=formatter, epilog=epilog)
    s.add_argument("path", nargs="?", default="study.yaml", metavar="PATH", help="file to write; - for stdout")
    s.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    s.set_defaults(func=cmd_init)
