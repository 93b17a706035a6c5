"""Every key and label mergeopt stores in an Optuna study, and the names its readers look for.

A study lives in Optuna's storage: study user attributes hold the spec, the references, the
set-up units and their claims, the validation and the fronts; trial user attributes hold what
a trial scored (records.py reads and writes them). The values here are the stored format:
changing one makes stored studies unreadable, so they only ever gain new names.

This module imports nothing of the project, so every layer (optimizer/, service/, tests) can."""

from __future__ import annotations

# ------------------------------------------------------------------ study user attributes
A_SPEC = "spec"  # the spec as given (model_dump by alias)
A_IDENTITY = "identity"  # what makes two specs the same study (spec.identity())
A_REFS = "references"  # the references' scores: REFS_* below
A_FRONT = "front"  # the front over search documents
A_DIRECTIONS = "directions"  # task -> higher is better
A_NOISE = "noise"  # standard errors at the search's document count: NOISE_* below
A_VREFS = "validation_refs"  # task -> trial number of its reference on validation documents
A_VFRONT = "validation_front"  # the front over validation documents
A_SETUP_OPEN = "setup_open"  # [result key, claim key] of each set-up unit open at the last look
A_SETUP_DONE = "setup_done"  # set-up complete

# Per-unit keys: a result key marks a unit done, a claim key ({CLAIM_BY, CLAIM_AT}) its owner.
SETUP_RESULT = "setup:"  # + unit label: UNIT_* below
SETUP_CLAIM = "setupclaim:"  # + unit label
VAL = "val:"  # + trial number: VAL_* below
VAL_CLAIM = "valclaim:"  # + trial number
CLAIM_BY, CLAIM_AT = "by", "at"

# A_REFS: {"singles": {checkpoint: raw}, "base": raw | None, "timings": {checkpoint or "__base__": timings}}
REFS_SINGLES, REFS_BASE, REFS_TIMINGS, REFS_BASE_TIMINGS = "singles", "base", "timings", "__base__"
# A set-up unit's result: {"raw", "timings"}, or {"error"} for a baseline that failed.
UNIT_RAW, UNIT_TIMINGS, UNIT_ERROR = "raw", "timings", "error"
UNIT_DOCS = "search_docs"  # and, where the evaluator gives them, the per-document values (T_SDOCS)
# A trial's validation: {"docs", "timings", "summary"}, or {"error"}.
VAL_DOCS, VAL_TIMINGS, VAL_SUMMARY, VAL_ERROR = "docs", "timings", "summary", "error"
# A_NOISE: {"tasks": {task: {"documents", "se"}}, "objective_se", "resolvable"}
NOISE_TASKS, NOISE_OBJECTIVE_SE, NOISE_RESOLVABLE = "tasks", "objective_se", "resolvable"

# ------------------------------------------------------------------ trial user attributes
T_CANDIDATE = "candidate"  # MergeSpec.to_json()
T_KIND = "kind"  # KIND_*
T_LABEL = "label"  # labels below
T_RAW = "raw"  # task -> score as the evaluator reports it
T_NORM = "normalized"  # task -> normalized score
T_OBJ = "objective"  # the search objective
T_TIMES = "timings"  # TIME_* and the evaluator's own
T_ERROR = "error"  # why the trial failed
T_FIDELITY = "fidelity"  # fraction of the search documents the scores are on (absent: 1)
T_SDOCS = "search_docs"  # task -> stats.DocScores.to_json() behind T_RAW (full fidelity; absent: none given)

KIND_BASELINE = "baseline"  # set-up: references, merge baselines, soups
KIND_SEARCH = "search"  # proposed by the sampler

TIME_TOTAL = "total_s"  # the evaluation, end to end
TIME_REUSED_FROM = "reused_from_trial"  # scores taken from this trial's, not evaluated (reuse.py)

# ------------------------------------------------------------------ trial labels
CHECKPOINT_PREFIX = "checkpoint:"  # + name: a checkpoint alone
BASE_LABEL = "base"  # the base model alone
UNIFORM = "uniform"  # uniform average
TASK_ARITHMETIC = "task_arithmetic"
TIES = "ties"
DARE_TIES = "dare_ties"
SOUP_PREFIX = "greedy soup +"  # + the checkpoint this step of greedy soup added
SEARCH_PREFIX = "trial "  # + number: a search trial


def checkpoint_label(name: str) -> str:
    return f"{CHECKPOINT_PREFIX}{name}"


def is_checkpoint(label: str) -> bool:
    return label.startswith(CHECKPOINT_PREFIX)


def is_single(label: str) -> bool:
    """A single model: a checkpoint alone or the base."""
    return is_checkpoint(label) or label == BASE_LABEL


def is_soup(label: str) -> bool:
    return label.startswith(SOUP_PREFIX)


def soup_label(added: str) -> str:
    return f"{SOUP_PREFIX}{added}"


def search_label(number: int) -> str:
    return f"{SEARCH_PREFIX}{number}"


# ------------------------------------------------------------------ the verdict (verdict.py)
V_PICK = "pick"  # the search's best trial on search documents
V_RECOMMENDED = "recommended"  # the trial to use (optimizer/recommend.py)
V_RECOMMENDATION = "recommendation"  # why: recommend.Recommendation.to_json()
V_SEARCH_PAID = "search_paid"
V_COMPARISONS = "comparisons"
V_DOCUMENTS = "documents"
V_TEXT = "text"
# What the search's best is compared with (each comparison's "against").
ROLE_BEST_SINGLE = "best single model"
ROLE_BEST_MERGE = "best merge baseline"
ROLE_BEST_CHECKPOINT = "best single checkpoint"
ROLE_UNIFORM = "uniform average"
ROLE_BASE = "base model"
