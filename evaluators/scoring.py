"""lm-eval scoring of the resident model. The task dict (documents, prompts, few-shot samples)
is built once per study; each candidate only re-runs lm-eval's ``evaluate`` on it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluators.lm_eval_reuse import cache_templates, reuse_requests
from evaluators.quiet import quiet_libraries


class SuiteError(ValueError):
    """A problem with the task suite that the user can fix (unknown task, missing metric)."""


@dataclass(frozen=True)
class TaskRequest:
    task: str
    metric: str = "acc,none"  # lm-eval's "<metric>,<filter>" key
    num_fewshot: int | None = None
    higher_is_better: bool | None = None  # None: ask lm-eval


def _study_hflm():
    """HFLM for a study: no per-call progress bars, and each (context, continuation) pair is
    tokenized once per study (the tokenizer and the documents never change between trials)."""
    from lm_eval.models.huggingface import HFLM

    class StudyHFLM(HFLM):
        def _encode_pair(self, context, continuation):
            cache = self.__dict__.setdefault("_mergeopt_pairs", {})
            key = (context, continuation)
            if key not in cache:
                cache[key] = super()._encode_pair(context, continuation)
            return cache[key]

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return StudyHFLM


def check_task_names(names: list[str], include_path: str | Path | None):
    """lm-eval's TaskManager for this suite; unknown tasks are a SuiteError listing what exists."""
    if os.environ.get("HF_HUB_OFFLINE"):
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    quiet_libraries()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise SuiteError(f"include_path {include_path} is not a directory")
    manager = TaskManager(
        include_path=str(include_path) if include_path else None,
        include_defaults=include_path is None,
    )
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        local = sorted(n for n in known if not n.startswith("_"))[:20]
        raise SuiteError(f"unknown lm-eval task '{unknown[0]}' (tasks found: {', '.join(local)})")
    return manager


def load_task_dict(requests: list[TaskRequest], include_path: str | Path | None) -> dict:
    """Build lm-eval's task dict once (documents, prompts, few-shot samples)."""
    from lm_eval.tasks import get_task_dict

    names = [r.task for r in requests]
    manager = check_task_names(names, include_path)
    try:
        task_dict = get_task_dict(names, manager)
    except Exception as exc:  # dataset files missing, bad YAML...
        raise SuiteError(f"cannot load tasks {names}: {exc}") from exc
    tasks = task_dict["tasks"] if "tasks" in task_dict else task_dict
    for r in requests:
        if r.num_fewshot is not None:
            tasks[r.task].set_config(key="num_fewshot", value=r.num_fewshot)
    cache_templates()
    for task in tasks.values():
        reuse_requests(task)
    return task_dict


class SuiteScorer:
    """Scores a model on a fixed suite: raw metric per task, and each metric's direction."""

    def __init__(
        self,
        requests: list[TaskRequest],
        include_path: str | Path | None,
        *,
        limit: int | float | None = None,
        batch_size: int = 32,
    ) -> None:
        self.requests = requests
        self.limit = limit
        self.batch_size = batch_size
        self.task_dict = load_task_dict(requests, include_path)
        self.tasks = self.task_dict["tasks"] if "tasks" in self.task_dict else self.task_dict
        self.directions: dict[str, bool] = {
            r.task: r.higher_is_better for r in requests if r.higher_is_better is not None
        }
        self._lm = None
        self._lm_model = None

    def _lm_for(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        # HFLM keeps a reference to the model: wrapping once is enough because candidates are
        # written into the same parameters in place.
        if self._lm is None or self._lm_model is not model:
            self._lm = _study_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            self._lm_model = model
        return self._lm

    def limit_for(self, fraction: float) -> int | float | None:
        """lm-eval's limit for a fraction of this suite's documents (a prefix of each task's)."""
        if fraction >= 1:
            return self.limit
        if self.limit is None:
            return fraction  # lm-eval reads a float < 1 as a fraction of the documents
        if isinstance(self.limit, float) and self.limit < 1:
            return self.limit * fraction
        return max(1, int(self.limit * fraction))

    def score(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fraction: float = 1.0) -> dict[str, float]:
        from lm_eval.evaluator import evaluate

        lm = self._lm_for(model, tokenizer)
        out = evaluate(lm, self.task_dict, limit=self.limit_for(fraction), bootstrap_iters=0, log_samples=False)
        scores: dict[str, float] = {}
        for r in self.requests:
            result = out["results"].get(r.task, {})
            if r.metric not in result:
                available = sorted(k for k in result if "," in k and "_stderr," not in k)
                raise SuiteError(f"task '{r.task}' has no metric '{r.metric}' (available: {available})")
            value = float(result[r.metric])
            if math.isnan(value):
                raise SuiteError(f"task '{r.task}' metric '{r.metric}' is NaN")
            scores[r.task] = value
            if r.task not in self.directions:
                hib = out.get("higher_is_better", {}).get(r.task, {})
                self.directions[r.task] = bool(hib.get(r.metric.split(",")[0], True))
        return scores
