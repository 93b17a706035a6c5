"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from optimizer.spec import (
    DEVICE_PATTERN,
    MAX_PRIORITY,
    NAME_PATTERN,
    PoolSpec,
    SearchSpec,
    ServerPath,
    SuiteSpec,
    refuse_nul,
)

# Stored as UTC; SQLite hands them back naive. Responses always carry the offset (RFC 3339).
Timestamp = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _no_nul = model_validator(mode="before")(refuse_nul)


class PoolCreate(PoolSpec):
    name: str = Field(pattern=NAME_PATTERN)


class PoolOut(BaseModel):
    id: str
    name: str
    base: str | None
    checkpoints: list[dict]
    fingerprint: dict
    created_at: Timestamp


class SuiteCreate(SuiteSpec):
    name: str = Field(pattern=NAME_PATTERN)


class SuiteOut(BaseModel):
    id: str
    name: str
    include_path: str | None
    tasks: list[dict]
    limit: float | None
    batch_size: int
    validation: float
    include_defaults: bool
    created_at: Timestamp


class StudyCreate(_In):
    """The study spec of `mergeopt run` (pool and suite inline), or references to registered ones.
    ``storage`` is accepted for compatibility with spec files and ignored: the server's database
    holds every study."""

    name: str = Field(pattern=NAME_PATTERN)
    pool: PoolSpec | None = None
    pool_id: str | None = Field(None, min_length=1, max_length=64)  # "" was taken for "not given"
    suite: SuiteSpec | None = None
    suite_id: str | None = Field(None, min_length=1, max_length=64)  # "" was taken for "not given"
    search: SearchSpec = Field(default_factory=SearchSpec)
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher first; workers take "
                          "the highest-priority study they can work on")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, mps, cuda or cuda:N")
    storage: str | None = Field(None, max_length=4096)

    @model_validator(mode="after")
    def _one_of(self) -> StudyCreate:
        if (self.pool is None) == (self.pool_id is None):
            raise ValueError("give exactly one of pool or pool_id")
        if (self.suite is None) == (self.suite_id is None):
            raise ValueError("give exactly one of suite or suite_id")
        return self


class Progress(BaseModel):
    completed: int
    running: int
    failed: int
    budget: int


class Best(BaseModel):
    trial: int
    label: str
    objective: float
    normalized: dict[str, float]


class Recommended(BaseModel):
    """The study's headline: the recommended merge scored on validation documents."""

    trial: int
    label: str
    validation: dict[str, float] = Field(description="objective on validation documents: value, lo, hi (95%)")
    search_objective: float | None = Field(None, description="on the search documents (optimistic)")
    rule: str | None = Field(None, description="why this trial: 'best on search' (the best on search documents of "
                             "all trials), 'within noise' (the search's best led set-up's best on search documents "
                             "by no more than their noise: set-up's kept), 'beyond noise' (the search's best led "
                             "beyond it); the verdict's text says by how much")


class StudyOut(BaseModel):
    id: str
    name: str
    state: str
    priority: int
    pool_id: str
    suite_id: str
    search: dict
    progress: Progress
    best: Best | None = Field(description="the best objective on SEARCH documents (optimistic, for diagnosis)")
    recommended: Recommended | None = Field(None, description="the recommended merge (verdict) with its validation "
                                            "objective and 95% interval: the number to report; null until validated")
    hypervolume: float
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class TrialOut(BaseModel):
    number: int
    state: str
    kind: str
    label: str
    candidate: dict
    raw: dict[str, float]
    normalized: dict[str, float]
    objective: float | None
    timings: dict[str, float]
    error: str | None
    validation: dict | None = Field(None, description="scores on the validation documents with 95% intervals "
                                    "(null until validated: references, baselines and search-front trials are)")


class FrontEntry(BaseModel):
    trial: int
    label: str
    kind: str
    objective: float | None
    merge: dict
    raw: dict[str, float]
    normalized: dict[str, float]
    intervals: dict | None = Field(None, description="objective, raw and normalized per task: value, se, lo, hi "
                                   "(95%), and documents per task; null on the search split")
    search: dict | None = Field(None, description="the search documents' scores (optimistic; for diagnosis)")


class FrontOut(BaseModel):
    tasks: list[str]
    hypervolume: float
    hypervolume_history: list[tuple[int, float]] = Field(
        default_factory=list, description="(trial, hypervolume of the search documents' front up to that trial) at "
                                          "each trial that changed it")
    hypervolume_skips: list[str] = Field(default_factory=list, description="tasks left out of the hypervolume: "
                                         "no trial scores above 0 on them, so they would make it 0")
    reference_point: list[float]
    front: list[FrontEntry]
    split: str = Field("search", description="validation (documents the search never saw) or search")
    verdict: dict | None = Field(None, description="the search's best merge vs the baselines, paired over "
                                 "validation documents")


class Problem(BaseModel):
    """A 4xx body: ``detail`` says why; for a request that does not match the schema it is the
    list of validation errors, for a spec/pool/suite the engine refuses (also a 422) a message."""

    detail: str | list[dict]


class ExportRequest(_In):
    out_dir: ServerPath = Field(description="server-side folder under an allowed root")


class ExportOut(BaseModel):
    path: str
    files: list[str]
