"""What the engine's host may tune: memory, placement, the compiled kernels, prefix sharing.

Evaluators never read the environment: the service fills these from its MERGEOPT_* settings
(service/settings.py, Settings.evaluator_options) and passes them in where it builds an evaluator
or a resident pool; whoever builds one directly (tests, benchmarks) passes its own or the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EvaluatorOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_budget: str | int | None = Field(
        default=None, description="what a study may hold on its device (memory_budget.py); None: 70% of what is free")
    pool_on: Literal["auto", "host", "device"] = Field(
        default="auto", description="force the pool's placement (streaming.py); auto: by the memory budget")
    bounded_min: int | None = Field(
        default=None, ge=0, description="radix-select every TIES/DARE tensor over this many entries (bounded_merge.py)")
    prefix_sharing: bool = Field(default=True, description="score shared contexts once (prefix_scoring.py)")
    native: bool = Field(default=True, description="the compiled CPU merges where a C compiler is found (native.py)")
    cache_dir: Path | None = Field(default=None, description="where they are compiled to; None: ~/.cache/mergeopt")

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, v):
        if isinstance(v, str):
            from evaluators.merging.memory_budget import parse  # torch: only when a budget is given

            parse(v)
        return v
