"""MergeEvaluator: the evaluators' implementation of the optimizer's Evaluator protocol.

Set-up (once per study): validate the pool from headers, build the lm-eval task dict, load the
pool resident, load one model. Per candidate: write the merge into the model, run lm-eval."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer

from contract.merge import MergeSpec
from evaluators.merging.resident import ResidentModel, ResidentPool, pick_device
from evaluators.options import EvaluatorOptions
from evaluators.pool.encode_check import check_documents_encode
from evaluators.pool.staging import stage_checkpoint
from evaluators.pool.validation import PoolError, validate_pool
from evaluators.scoring.quiet import quiet_libraries
from evaluators.scoring.suite_scorer import SuiteScorer, TaskRequest
from evaluators.security.lm_eval_guard import guard_lm_eval
from evaluators.security.staging import Staging


def load_tokenizer(path: Path, who: str):
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # its text may quote the file: the type only
        raise PoolError(f"{who}: no loadable tokenizer ({type(exc).__name__})") from exc


class MergeEvaluator:
    def __init__(
        self,
        checkpoints: list[tuple[str, str | Path]],
        base: str | Path | None,
        tasks: list[TaskRequest],
        include_path: str | Path | None,
        *,
        limit: int | float | None = None,
        batch_size: int = 32,
        device: str = "auto",
        progress: bool = False,
        validation: float | int = 0,
        include_defaults: bool = False,
        roots: list[Path] | None = None,
        trusted_task_roots: Sequence[Path] = (),
        task_box=None,
        should_stop=None,
        options: EvaluatorOptions | None = None,
    ) -> None:
        """``options``: the host's tuning (options.py: memory budget, placement, kernels, prefix sharing)."""
        quiet_libraries()
        options = options or EvaluatorOptions()
        guard_lm_eval()  # before any task is read: sandboxed templates, bounded filters (lm_eval_guard.py)
        # roots (the service's allowed roots): pool and task files are re-checked as they are
        # opened; Python in task folders runs only from trusted_task_roots.
        self.pool_info = validate_pool(checkpoints, base, roots=roots)
        self.scorer = SuiteScorer(tasks, include_path, limit=limit, batch_size=batch_size, validation=validation,
                                  roots=roots, trusted=trusted_task_roots, include_defaults=include_defaults,
                                  box=task_box, should_stop=should_stop, prefix_sharing=options.prefix_sharing)
        ref = self.pool_info.reference
        # transformers opens files by name: it gets a private copy read through the guard.
        with Staging() as staging:
            staged = stage_checkpoint(ref, staging)
            self.tokenizer = load_tokenizer(staged, f"checkpoint '{ref.name}'")
            # Before any weight is loaded: a tokenizer that cannot encode a document fails here,
            # named, not in lm-eval mid-study (encode_check.py).
            check_documents_encode(self.tokenizer, self.scorer, f"checkpoint '{ref.name}'")
            self.resident = ResidentPool(self.pool_info, pick_device(device), progress=progress, options=options)
            self.model = ResidentModel(self.resident, source=staged)
        self.last_timings: dict[str, float] = {}
        self.last_documents: dict[str, dict] = {}
        self._resident_spec: MergeSpec | None = None

    @property
    def checkpoint_names(self) -> list[str]:
        return self.pool_info.names

    @property
    def has_base(self) -> bool:
        return self.pool_info.base is not None

    @property
    def directions(self) -> dict[str, bool]:
        """task -> higher is better (known after the first evaluation unless set in the spec)."""
        return self.scorer.directions

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        return self.scorer.doc_counts(split)

    def _materialize(self, spec: MergeSpec) -> float:
        t0 = time.perf_counter()
        if spec != self._resident_spec:
            self.model.materialize(spec)
            self._resident_spec = spec
        return time.perf_counter() - t0

    def evaluate(self, candidate: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        """Raw scores on ``fidelity`` (a fraction) of each task's search documents. Successive
        rungs of one trial reuse the materialized model."""
        merge_s = self._materialize(candidate)
        t0 = time.perf_counter()
        scores = self.scorer.score(self.model.model, self.tokenizer, fidelity)
        self.last_timings = {"materialize_s": merge_s, "score_s": time.perf_counter() - t0}
        self.last_documents = self.scorer.last_documents
        return scores

    def validate(self, candidate: MergeSpec) -> dict[str, dict]:
        """Per task, the score on the validation documents and its per-document values."""
        merge_s = self._materialize(candidate)
        t0 = time.perf_counter()
        docs = self.scorer.score_docs(self.model.model, self.tokenizer, "validation")
        self.last_timings = {"materialize_s": merge_s, "score_s": time.perf_counter() - t0}
        return docs
