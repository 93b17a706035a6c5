"""lm-eval scoring of the resident model. The task dict (documents, prompts, few-shot samples)
is built once per study; each candidate only re-runs lm-eval's ``evaluate`` on it."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluators.adapters import lm_eval as lm_eval_adapter
from evaluators.scoring.quiet import quiet_libraries
from evaluators.scoring.splits import prefix, split_documents
from evaluators.scoring.suite_types import (  # defined there, imported from here too
    SuiteError,
    TaskRequest,
)
from evaluators.scoring.task_dict import check_names, tasks_from_manager  # the same
from evaluators.security import render_memo
from evaluators.security.fileguard import Roots
from evaluators.security.lm_eval_guard import guard_lm_eval
from evaluators.security.staging import Staging

log = logging.getLogger(__name__)

# lm-eval aggregations whose per-document values can be resampled (the optimizer's stats.py):
# a mean of per-document values, or a perplexity of per-document log-likelihoods.
AGGREGATIONS = ("mean", "perplexity", "weighted_perplexity", "bits_per_byte")


def _study_hflm():
    """HFLM for a study: no per-call progress bars, and each (context, continuation) pair is
    tokenized once per study (the tokenizer and the documents never change between trials)."""
    cls = lm_eval_adapter.study_hflm(_prefix_shared)
    cls.prefix_sharing = True  # prefix_scoring.py; SuiteScorer(prefix_sharing=False) keeps HFLM's path
    return cls


def _prefix_shared(lm, requests: list) -> list | None:
    """Log-likelihoods by prefix sharing, or None for HFLM's own path."""
    from evaluators.scoring.prefix import hflm_loglikelihood_tokens

    return hflm_loglikelihood_tokens(lm, requests) if lm.prefix_sharing else None


def check_task_names(names: list[str], include_path: str | Path | None, *, roots: Roots = None,
                     trusted: Sequence[Path] = (), functions: bool = False, include_defaults: bool = False,
                     staging=None):
    """lm-eval's TaskManager for this suite; unknown tasks are a SuiteError listing what exists.

    With an include_path, its task files are read and checked first (task_files.py): ``roots``,
    where they may lead (None: anywhere); ``trusted``, where their Python may come from;
    ``functions``, import their ``!function`` tags (to build tasks, not to check names);
    ``include_defaults``, lm-eval's built-in tasks beside them (always, without an include_path);
    ``staging`` (a staging.Staging), where the data files the tasks read are copied (task_data.py)."""
    guard_lm_eval()  # before lm-eval reads a task (registration: the API; set-up: worker, CLI)
    if os.environ.get("HF_HUB_OFFLINE"):
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    quiet_libraries()
    if include_path is None:  # lm-eval's own tasks, installed with it (operator-trusted code)
        from evaluators.scoring.task_files import builtin_manager

        manager = builtin_manager()
    elif not Path(include_path).is_dir():
        raise SuiteError(f"include_path {include_path} is not a directory")
    else:
        from evaluators.scoring.task_files import suite_manager

        manager = suite_manager(Path(include_path), roots, trusted, functions=functions,
                                include_defaults=include_defaults, staging=staging)
    return check_names(names, manager)


def load_task_dict(requests: list[TaskRequest], include_path: str | Path | None, *, roots: Roots = None,
                   trusted: Sequence[Path] = (), include_defaults: bool = False, staging=None) -> dict:
    """Build lm-eval's task dict once (documents, prompts, few-shot samples)."""
    names = [r.task for r in requests]
    manager = check_task_names(names, include_path, roots=roots, trusted=trusted, functions=True,
                               include_defaults=include_defaults, staging=staging)
    return tasks_from_manager(requests, manager)



class SuiteScorer:
    """Scores a model on a fixed suite: raw metric per task, and each metric's direction.

    Each task's documents are split once into search and validation documents (by content hash,
    see splits.py); ``score`` reads the search documents, ``score_docs`` any split per document."""

    def __init__(
        self,
        requests: list[TaskRequest],
        include_path: str | Path | None,
        *,
        limit: int | float | None = None,
        batch_size: int = 32,
        validation: float | int = 0,
        roots: Roots = None,
        trusted: Sequence[Path] = (),
        prefix_sharing: bool = True,
        include_defaults: bool = False,
        box=None,
        should_stop=None,
    ) -> None:
        """``box`` (a task_box.BoxLimits, with ``roots``): the tasks are built first in a bounded
        child, and every render here replays its renders (task_box.py); ``should_stop`` stops it."""
        guard_lm_eval()  # every template of these tasks renders sandboxed, every filter is bounded
        self.requests = requests
        # Log-likelihoods scored with each shared context run once (prefix_scoring.py), same
        # scores as lm-eval's; False (MERGEOPT_PREFIX_SHARING=0 through EvaluatorOptions) keeps lm-eval's path.
        self.prefix_sharing = prefix_sharing
        self.limit = limit
        self.batch_size = batch_size
        # With roots (the service), data files are read through the guard into a private copy
        # that `datasets` reads (staging.py); kept as long as the tasks may read their data.
        self.staging = Staging() if roots is not None else None
        self.replay = None
        if box is not None and roots is not None and include_path is not None:
            from evaluators.security.task_box import build_boxed

            self.task_dict, self.replay = build_boxed(requests, Path(include_path), roots, trusted, include_defaults,
                                                      self.staging, box, should_stop)
        else:
            self.task_dict = load_task_dict(requests, include_path, roots=roots, trusted=trusted,
                                            include_defaults=include_defaults, staging=self.staging)
        self.tasks = self.task_dict["tasks"] if "tasks" in self.task_dict else self.task_dict
        self.directions: dict[str, bool] = {
            r.task: r.higher_is_better for r in requests if r.higher_is_better is not None
        }
        self.splits = {r.task: split_documents(self.tasks[r.task].eval_docs, validation, limit) for r in requests}
        for r in requests:
            for split in ("search", "validation") if validation else ("search",):
                if not self.splits[r.task].indices(split):
                    raise SuiteError(f"task '{r.task}' has no {split} documents "
                                     f"({len(self.tasks[r.task].eval_docs)} in all; lower suite.validation or raise limit)")
        self._lm = None
        self._lm_model = None
        self.last_documents: dict[str, dict] = {}

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        return {task: len(s.indices(split)) for task, s in self.splits.items()}

    def _lm_for(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        # HFLM keeps a reference to the model: wrapping once is enough because candidates are
        # written into the same parameters in place.
        if self._lm is None or self._lm_model is not model:
            self._lm = _study_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            self._lm.prefix_sharing = self.prefix_sharing
            self._lm_model = model
        return self._lm

    def _run(self, model, tokenizer, samples: dict[str, list[int]], log_samples: bool) -> dict:
        from lm_eval.evaluator import evaluate

        lm = self._lm_for(model, tokenizer)
        with render_memo.using(self.replay):  # no client template rendered here (task_box.py)
            return evaluate(lm, self.task_dict, samples=samples, bootstrap_iters=0, log_samples=log_samples)

    def _metric(self, out: dict, r: TaskRequest) -> float:
        result = out["results"].get(r.task, {})
        if r.metric not in result:
            available = sorted(k for k in result if "," in k and "_stderr," not in k)
            raise SuiteError(f"task '{r.task}' has no metric '{r.metric}' (available: {available})")
        value = float(result[r.metric])
        if math.isnan(value):
            raise SuiteError(f"task '{r.task}' metric '{r.metric}' is NaN")
        if r.task not in self.directions:
            hib = out.get("higher_is_better", {}).get(r.task, {})
            self.directions[r.task] = bool(hib.get(r.metric.split(",")[0], True))
        return value

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fraction: float = 1.0) -> dict[str, float]:
        """Raw scores on the search documents (the first ``fraction`` of them). On all of them,
        ``last_documents`` holds each score's per-document values (the study's noise-aware
        recommendation pairs them); empty when a metric's aggregation has none."""
        samples = {r.task: prefix(self.splits[r.task].search, fraction) for r in self.requests}
        whole = fraction >= 1
        out = self._run(model, tokenizer, samples, log_samples=whole)
        scores = {r.task: self._metric(out, r) for r in self.requests}
        self.last_documents = self._documents(out, samples) if whole else {}
        return scores

    def _documents(self, out: dict, samples: dict[str, list[int]]) -> dict[str, dict]:
        try:
            return self._per_task(out, samples)
        except SuiteError:  # no per-document values to resample: the scores stand alone
            return {}

    def _per_task(self, out: dict, samples: dict[str, list[int]]) -> dict[str, dict]:
        """Per task, lm-eval's score and its per-document values (SuiteError where it has none)."""
        result = {}
        for r in self.requests:
            values, agg = per_document(self.tasks[r.task], r, out["samples"][r.task], samples[r.task])
            result[r.task] = {"score": self._metric(out, r), "values": values, "aggregation": agg}
        return result

    def score_docs(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   split: str = "validation") -> dict[str, dict]:
        """Per task: lm-eval's score on one split and its per-document values, in the split's
        document order, as ``{"score", "values", "aggregation"}``."""
        samples = {r.task: self.splits[r.task].indices(split) for r in self.requests}
        return self._per_task(self._run(model, tokenizer, samples, log_samples=True), samples)


def per_document(task, request: TaskRequest, logged: list[dict], order: list[int]) -> tuple[list, str]:
    """lm-eval's logged values of one metric and filter, in ``order``, and their aggregation."""
    name, _, filt = request.metric.partition(",")
    agg = getattr(task.aggregation().get(name), "__name__", None)
    if agg not in AGGREGATIONS:
        raise SuiteError(f"task '{request.task}' metric '{name}' aggregates with '{agg}': mergeopt reports "
                         f"intervals for per-document means and perplexities ({', '.join(AGGREGATIONS)})")
    by_doc = {s["doc_id"]: s[name] for s in logged if s.get("filter", "none") == (filt or "none") and name in s}
    missing = [i for i in order if i not in by_doc]
    if missing:
        raise SuiteError(f"task '{request.task}': lm-eval logged no '{name}' for document {missing[0]}")
    return [_plain(by_doc[i]) for i in order], agg


def _plain(value):
    """A per-document value as JSON-able floats (perplexities log (log-likelihood, length) pairs)."""
    return [float(v) for v in value] if isinstance(value, list | tuple) else float(value)
