"""Glue between the optimizer and the evaluators for one process: build the evaluator a spec
asks for, run a study, and open stored studies by YAML file or by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna

from contract.merge import MergeSpec
from evaluators.engine import MergeEvaluator
from evaluators.merging.resident import ResidentPool, pick_device
from evaluators.options import EvaluatorOptions
from evaluators.pool.validation import validate_pool
from evaluators.scoring.suite_scorer import TaskRequest
from optimizer import records as R
from optimizer.carry_over import stored_spec
from optimizer.loop import StudyRunner
from optimizer.spec import DEFAULT_STORAGE, SpecError, StudySpec, load_spec
from optimizer.storage import open_storage


def build_evaluator(spec: StudySpec, progress: bool = True, roots: list[Path] | None = None,
                    trusted_task_roots: Sequence[Path] = (), task_box=None, should_stop=None,
                    options: EvaluatorOptions | None = None) -> MergeEvaluator:
    """``roots``: where pool and task files may lead (None: anywhere, for the operator's CLI);
    ``trusted_task_roots``: where Python in task folders may run from (MERGEOPT_TRUSTED_TASK_ROOTS);
    ``task_box``: the limits of the child that builds the tasks first (evaluators/security/task_box.py),
    ``should_stop`` stops it (a cancel); ``options``: Settings.evaluator_options() (None: the defaults)."""
    tasks = [TaskRequest(t.task, t.metric, t.num_fewshot, t.higher_is_better) for t in spec.suite.tasks]
    return MergeEvaluator(
        [(c.name, c.path) for c in spec.pool.checkpoints],
        spec.pool.base,
        tasks,
        spec.suite.include_path,
        limit=spec.suite.limit,
        batch_size=spec.suite.batch_size,
        device=spec.device,
        progress=progress,
        validation=spec.suite.validation,
        include_defaults=spec.suite.include_defaults,
        roots=roots,
        trusted_task_roots=trusted_task_roots,
        task_box=task_box,
        should_stop=should_stop,
        options=options,
    )


def run_study(spec: StudySpec, progress: bool = True, trusted_task_roots: Sequence[Path] = (),
              options: EvaluatorOptions | None = None) -> optuna.Study:
    evaluator = build_evaluator(spec, progress, trusted_task_roots=trusted_task_roots, options=options)
    runner = StudyRunner(spec, evaluator, progress=progress)
    runner.run()
    return runner.study


def open_study(ref: str, storage: str | None = None) -> tuple[optuna.Study, StudySpec]:
    """``ref`` is a study YAML (storage from the spec) or a study name (storage from --storage)."""
    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        spec = load_spec(ref)
        name, url = spec.name, storage or spec.storage
    else:
        name, url = ref, storage or DEFAULT_STORAGE
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise SpecError(f"no study named '{name}' in {url}") from None
    if R.A_SPEC not in study.user_attrs:
        raise SpecError(f"study '{name}' in {url} was not created by mergeopt")
    return study, stored_spec(study.user_attrs)


def export_trial(study: optuna.Study, spec: StudySpec, number: int, out_dir: str | Path, progress: bool = True,
                 *, roots: list[Path] | None = None, out_roots: list[Path] | None = None,
                 device: str | None = None, options: EvaluatorOptions | None = None) -> Path:
    """``roots``: where pool files may lead (checked as they are opened); ``out_roots``: where
    ``out_dir`` may be; ``device``: the API passes "cpu", never the workers' device; ``options``:
    Settings.evaluator_options()."""
    from evaluators.merging.export import write_merge

    rows = {r.number: r for r in R.trial_rows(study)}
    if number not in rows:
        raise SpecError(f"study '{spec.name}' has no trial {number} (trials: 0..{len(rows) - 1})")
    row = rows[number]
    if not row.candidate:
        raise SpecError(f"trial {number} has no recorded merge")
    pool = validate_pool([(c.name, c.path) for c in spec.pool.checkpoints], spec.pool.base, roots=roots)
    resident = ResidentPool(pool, pick_device(device or spec.device), progress=progress, options=options)
    return write_merge(resident, MergeSpec.model_validate(row.candidate), out_dir, progress=progress, out_roots=out_roots)
