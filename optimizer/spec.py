"""The study spec (YAML for `mergeopt run`, the same JSON body for `POST /v1/studies`).

Everything a user can get wrong is checked here, before any model is loaded."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.granularity import Granularity, parse_granularity
from contract.merge import BASE_WEIGHT
from contract.methods import METHOD_INFO, MethodName

SamplerName = Literal["cmaes", "nsga2", "tpe", "gp", "random"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# A study's storage unless its spec names one, and the service's database unless
# MERGEOPT_DATABASE_URL does (service/settings.py): a SQLite file in the working folder.
DEFAULT_STORAGE = "sqlite:///mergeopt.db"
# Share of each task's documents kept from the search for the reported scores. Less leaves the
# reported intervals wide; more leaves the search's own scores too noisy to rank candidates.
DEFAULT_VALIDATION = 0.4
# The warm-started first CMA-ES run's step (at most sigma0), box or gated weights: bench/search.py's
# box_local / gated_local (issue 18) led or tied the full step on every pool character measured
# (analytic interior, merge_helps, weighted_helps, recycle8/16; bench/RESULTS.md).
WARM_SIGMA0 = 0.1
# Bounds on every number and list a client sends: past them a value is a mistake or an attack
# (a population of 1e10 allocates hundreds of GB, a seed >= 2**32 fails in NumPy on every pick).
MAX_CHECKPOINTS = 128
MAX_TASKS = 256
MAX_TRIALS = 100_000
MAX_POPULATION = 1_000
MAX_SEED = 2**32 - 1
MAX_PRIORITY = 1_000_000
MAX_DOCS = 10_000_000
MAX_RANGE = 1_000.0
MAX_PATH = 4096  # PATH_MAX; a component is at most NAME_MAX (255) bytes
# What torch.device accepts for the devices mergeopt runs on; whether it exists is the worker's
# question (the API may run on another machine), answered when it sets the study up.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$"


class SpecError(ValueError):
    """An invalid study spec; the message says which field and why."""


def refuse_nul(data):
    """A "before" check for every model a client fills: no NUL byte in a string field (no name,
    path or metric has one, and PostgreSQL refuses them in text: a 500 otherwise)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{key}: a NUL byte is not allowed")
    return data


class _Strict(BaseModel):
    # NaN/Infinity (JSON bodies may carry them) are never a valid setting and cannot be stored as JSON.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    _no_nul = model_validator(mode="before")(refuse_nul)


def _no_duplicates(items: list, key, message: str) -> list:
    dupes = sorted(n for n, k in Counter(map(key, items)).items() if k > 1)
    if dupes:
        raise ValueError(message.format(dupes[0]))
    return items


def _sane_path(p: str) -> str:
    """Refused here, not by the file system later: a NUL byte (ValueError in every os call) and
    over-long names (ENAMETOOLONG), which would otherwise surface as a 500."""
    if "\x00" in p:
        raise ValueError("a path must not contain a NUL byte")
    if len(p) > MAX_PATH:
        raise ValueError(f"a path is at most {MAX_PATH} characters")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in p.split("/")):
        raise ValueError("a path component is at most 255 bytes")
    return p


ServerPath = Annotated[str, AfterValidator(_sane_path)]
Coefficient = Annotated[float, Field(ge=-MAX_RANGE, le=MAX_RANGE)]


class CheckpointSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    path: ServerPath


class PoolSpec(_Strict):
    base: ServerPath | None = None
    checkpoints: list[CheckpointSpec] = Field(min_length=1, max_length=MAX_CHECKPOINTS)
    base_in_search: bool = Field(
        default=False, description="linear only: the base is one more member with a searched weight"
    )

    @field_validator("checkpoints")
    @classmethod
    def _unique(cls, v: list[CheckpointSpec]) -> list[CheckpointSpec]:
        _no_duplicates(v, lambda c: c.name, "checkpoint name '{}' is used twice")
        # The same folder twice is the same model twice: no merge needs it.
        return _no_duplicates(v, lambda c: os.path.normpath(c.path), "checkpoint path '{}' is used twice")


class TaskSpec(_Strict):
    task: str = Field(min_length=1, max_length=256)
    metric: str = Field(default="acc,none", max_length=256)
    split: Literal["held_in", "held_out"] = "held_in"
    normalize: Literal["expert", "base", "none"] | None = Field(
        default=None, description="None: expert for held_in, base for held_out"
    )
    weight: float = Field(default=1.0, ge=0, le=1e6, description="weight in the 'weighted' objective")
    num_fewshot: int | None = Field(default=None, ge=0, le=128)
    higher_is_better: bool | None = None
    chance: float | None = Field(
        default=None, ge=0, lt=1,
        description="the score of random guessing (1/choices for multiple choice): normalized as "
                    "(s - chance) / (reference - chance), so a near-chance expert does not dominate the mean",
    )

    @property
    def normalization(self) -> str:
        if self.normalize is not None:
            return self.normalize
        return "expert" if self.split == "held_in" else "base"


class SuiteSpec(_Strict):
    include_path: ServerPath | None = None
    include_defaults: bool = Field(default=False, description="lm-eval's built-in tasks beside the include_path's")
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_TASKS)
    limit: int | float | None = Field(default=None, gt=0, le=MAX_DOCS, description="documents per task and split")
    batch_size: int = Field(default=32, ge=1, le=4096)
    validation: float | int = Field(
        default=DEFAULT_VALIDATION, ge=0, le=MAX_DOCS,
        description="documents held out from the search and used for every reported score: a fraction "
                    "(0 < f < 1) or a count (>= 1) of each task's documents; 0 turns it off",
    )

    @field_validator("validation")
    @classmethod
    def _validation(cls, v: float | int) -> float | int:
        if isinstance(v, float) and v >= 1:
            if not v.is_integer():
                raise ValueError("validation is a fraction below 1 or a whole number of documents")
            return int(v)
        return v

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        return _no_duplicates(v, lambda t: t.task, "task '{}' is listed twice")


class SearchSpec(_Strict):
    method: MethodName = "linear"
    sampler: SamplerName = "cmaes"
    objective: Literal["mean", "weighted"] = "mean"
    n_trials: int = Field(default=60, ge=1, le=MAX_TRIALS, description="all trials, baselines included")
    baselines: bool = True
    greedy_soup: bool = Field(default=True, description="with baselines: greedy soup (N-1 evaluations)")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    normalize: bool | None = Field(default=None, description="None: mergekit's method default")
    weight_range: tuple[Coefficient, Coefficient] = (0.0, 1.0)
    density_range: tuple[float, float] = (0.1, 1.0)
    lambda_range: tuple[Coefficient, Coefficient] = (0.2, 1.5)
    signed_weights: bool = Field(
        default=False, description="allow weights below 0 (extrapolation); weight_range then defaults to [-1, 1]"
    )
    max_amplification: float = Field(
        default=3.0, ge=1, le=MAX_RANGE,
        description="signed normalized linear: sum|w| / |sum w| at most this (see optimizer/signed.py)",
    )
    sigma0: float | None = Field(
        default=None, gt=0, le=1,
        description="CMA-ES step, as a fraction of each range; None: 0.3 * min(1, 2 / sqrt(d))",
    )
    warm_start: bool = Field(default=True, description="start CMA-ES at the best baseline")
    warm_sigma0: float | None = Field(
        default=None, gt=0, le=1,
        description="CMA-ES step when it starts at the best set-up trial (a fraction of each range); "
                    f"None: {WARM_SIGMA0} (or sigma0 where that is smaller)",
    )
    weights: Literal["box", "gated"] | None = Field(
        default=None,
        description="box: each weight searched in weight_range; gated: each searched in [-high, high] and "
                    "clipped at 0, so a single checkpoint or a sub-soup is a region of the space, not a corner; "
                    "None: box for a new study, the stored study's own when one is resumed",
    )
    population_size: int | None = Field(
        default=None, ge=2, le=MAX_POPULATION, description="None: CMA-ES' 4 + floor(3 ln d)"
    )
    restarts: Literal["none", "ipop"] = Field(
        default="ipop", description="cmaes: restart with twice the population when the search stalls"
    )
    restart_patience: int = Field(
        default=5, ge=1, le=MAX_TRIALS, description="cmaes: generations without a better best before a restart"
    )
    max_failures: int = Field(default=10, ge=1, le=MAX_TRIALS, description="stop after this many failed trials")
    pruner: Literal["none", "successive_halving", "hyperband"] = Field(
        default="none", description="multi-fidelity: score growing document subsets, stop weak trials early"
    )
    fidelities: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], max_length=16,
                                    description="fractions of each task's documents, one rung each")
    granularity: Literal["model"] | Granularity = Field(
        default="model", description="model: one weight per checkpoint; or {layer_groups: K} / {smooth: C} "
                                     "and/or {kinds: [...]} (README 'Granularity')")

    @property
    def weight_mode(self) -> Literal["box", "gated"]:
        """``weights`` resolved. Box stays the default: gated weights won where one weighted
        mixture of few members is best (bench/search.py's weighted_helps) and lost where every
        member contributes (bench/search_interior.py), so neither is better on every pool."""
        return self.weights or "box"

    @property
    def warm_step(self) -> float:
        """The first CMA-ES run's step when warm-started (samplers.py caps the default at sigma0)."""
        return self.warm_sigma0 if self.warm_sigma0 is not None else WARM_SIGMA0

    @field_validator("granularity", mode="before")
    @classmethod
    def _granularity(cls, v: object) -> object:
        return parse_granularity(v) or "model"  # one clear message instead of a union's two

    @model_validator(mode="after")
    def _ranges(self) -> SearchSpec:
        if self.signed_weights and "weight_range" not in self.model_fields_set:
            self.weight_range = (-1.0, 1.0)
        for field in ("weight_range", "density_range", "lambda_range"):
            lo, hi = getattr(self, field)
            if not lo < hi:
                raise ValueError(f"{field} must be [low, high] with low < high, got {[lo, hi]}")
        lo, hi = self.density_range
        if lo <= 0 or hi > 1:
            raise ValueError("density_range must lie in (0, 1]")
        if self.weight_range[0] < 0 and not self.signed_weights:
            raise ValueError("weights below 0 need search.signed_weights: true (extrapolation is opt-in)")
        f = self.fidelities
        if not f or f[-1] != 1.0 or any(not 0 < a < b for a, b in zip(f, f[1:], strict=False)) or f[0] <= 0:
            raise ValueError(f"fidelities must increase from above 0 to exactly 1.0, got {f}")
        if self.weights == "gated" and (self.signed_weights or self.weight_range[0] != 0):
            raise ValueError("search.weights 'gated' needs weight_range [0, high] without signed_weights "
                             "(its negative half is where a checkpoint is left out)")
        if self.weights == "gated" and self.granularity != "model":
            raise ValueError("search.weights 'gated' needs granularity model (one weight per checkpoint)")
        if self.pruner != "none" and self.sampler != "cmaes":
            raise ValueError(f"pruner '{self.pruner}' needs a single-objective study (sampler cmaes)")
        return self


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    pool: PoolSpec
    suite: SuiteSpec
    search: SearchSpec = Field(default_factory=SearchSpec)
    storage: str = DEFAULT_STORAGE
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, mps, cuda or cuda:N")

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        if METHOD_INFO[self.search.method].needs_base and not self.pool.base:
            raise ValueError(f"search.method '{self.search.method}' needs pool.base (task vectors are taken against it)")
        for t in self.suite.tasks:
            if t.normalization == "base" and not self.pool.base:
                raise ValueError(f"task '{t.task}' is normalized by the base model but pool.base is not set")
        if self.search.objective == "weighted" and sum(t.weight for t in self.suite.tasks) <= 0:
            raise ValueError("objective 'weighted' needs at least one task weight > 0")
        if len(self.pool.checkpoints) < 2 and self.search.method == "linear" and not self.pool.base:
            raise ValueError("a linear merge needs at least two checkpoints")
        if self.pool.base_in_search and (not self.pool.base or self.search.method != "linear"):
            # The task-vector methods are built on the base already (its weight is 1 - sum of
            # theirs); only a linear merge has no other way to keep some of it.
            raise ValueError("pool.base_in_search needs pool.base and search.method 'linear' "
                             f"(got method '{self.search.method}')")
        if self.pool.base_in_search and self.search.granularity != "model":
            raise ValueError("pool.base_in_search with search.granularity other than model is not supported yet")
        return self

    @property
    def checkpoint_names(self) -> list[str]:
        return [c.name for c in self.pool.checkpoints]

    @property
    def weight_names(self) -> list[str]:
        """The members a search weighs: the checkpoints, and the base with pool.base_in_search."""
        return [*self.checkpoint_names, BASE_WEIGHT] if self.pool.base_in_search else self.checkpoint_names

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.suite.tasks]

    def identity(self) -> dict:
        """What must not change when a stored study is resumed."""
        pool = self.pool.model_dump()
        if not pool["base_in_search"]:  # studies stored before the option existed stay the same
            del pool["base_in_search"]
        return {
            "pool": pool,
            "tasks": [_task_identity(t) for t in self.suite.tasks],
            "limit": self.suite.limit,
            "validation": self.suite.validation,
            "method": self.search.method,
            "sampler": self.search.sampler,
            "objective": self.search.objective,
        } | ({} if self.search.granularity == "model"  # studies stored before the option stay the same
             else {"granularity": self.search.granularity.model_dump()}) \
          | ({} if self.search.weight_mode == "box" else {"weights": self.search.weight_mode})


def _task_identity(t: TaskSpec) -> dict:
    out = t.model_dump()
    if out["chance"] is None:  # studies stored before the option stay the same
        del out["chance"]
    return out


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def parse_spec(data: dict, base_dir: Path | None = None) -> StudySpec:
    """Validate a spec dict; relative paths are resolved against ``base_dir`` (the YAML's folder)."""
    if not isinstance(data, dict):
        raise SpecError("the study spec must be a mapping (YAML object)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"invalid study spec: {format_validation_error(exc)}") from None
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    return spec


def _resolve_paths(spec: StudySpec, base_dir: Path) -> StudySpec:
    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    pool = spec.pool.model_copy(
        update={
            "base": fix(spec.pool.base),
            "checkpoints": [c.model_copy(update={"path": fix(c.path)}) for c in spec.pool.checkpoints],
        }
    )
    suite = spec.suite.model_copy(update={"include_path": fix(spec.suite.include_path)})
    storage = spec.storage
    prefix = "sqlite:///"
    if storage.startswith(prefix) and not storage.startswith(prefix + "/") and storage != prefix + ":memory:":
        storage = prefix + str((base_dir / storage[len(prefix):]).resolve())
    return spec.model_copy(update={"pool": pool, "suite": suite, "storage": storage})


def load_spec(path: str | Path) -> StudySpec:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"study file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p} is not valid YAML: {exc}") from None
    return parse_spec(data, base_dir=p.resolve().parent)
