"""Service settings from MERGEOPT_* environment variables or a .env file."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from optimizer.spec import DEFAULT_STORAGE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERGEOPT_", env_file=".env", extra="ignore")

    database_url: str = Field(default=DEFAULT_STORAGE, description="SQLAlchemy URL; also Optuna's storage")
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        description="checkpoint, task and export paths must lie under one of these (comma-separated)",
    )
    trusted_task_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="task folders whose Python may run (!function tags, class: tasks, HF evaluate metrics; "
                    "comma-separated); empty: none, task YAMLs are data and templates only",
    )
    tokens: Annotated[list[str], NoDecode] = Field(default_factory=list, description="bearer tokens (comma-separated)")
    protect_reads: bool = Field(default=False, description="require a token on GET routes too")
    host: str = "127.0.0.1"
    port: int = 8000
    worker_poll_s: float = 2.0
    heartbeat_s: int = Field(default=10, ge=1, description="trial heartbeat interval")
    grace_s: int = Field(default=60, ge=2, description="a RUNNING trial without heartbeat this long is failed and retried")
    sse_poll_s: float = 0.5
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024,
        description="larger request bodies are refused with 413 before they are read (a study spec is a few kB)",
    )
    worker_nice: int = Field(
        default=10, ge=0, le=19,
        description="CPU niceness of worker threads: where they share cores with the API and the "
                    "database, polls stay fast and trials take the spare cycles (0: no change)",
    )
    max_streams: int = Field(
        default=1000, ge=1,
        description="open event streams (GET .../events) in all; more are refused with 429 (each holds "
                    "a socket, never a database connection)",
    )
    max_streams_per_client: int = Field(
        default=32, ge=1, description="open event streams per client address; more are refused with 429",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="a request body not received in full this long after it started is refused with 408",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values served (comma-separated; '*.example.org' matches subdomains); "
                    "others get 400, against DNS rebinding. Empty: any host",
    )
    export_concurrency: int = Field(
        default=1, ge=1, le=64,
        description="exports (GET and POST .../export) built at once by the API process, on its CPU; "
                    "more are refused with 429",
    )
    export_per_client_per_min: int = Field(
        default=6, ge=0, le=10_000,
        description="export downloads (GET .../export) one client address may start per minute; "
                    "more get 429 (0: no limit)",
    )
    memory_budget: str | None = Field(
        default=None,
        description="memory a study may hold on its device: bytes ('24GiB', '12G') or a share of what is available "
                    "when it starts ('0.6', '60%'); unset: 70%. Decides GPU placement and the caches kept beside "
                    "the pool (fp32 task vectors, TIES rankings)",
    )
    pool_on: Literal["auto", "host", "device"] = Field(
        default="auto",
        description="where a study's pool lives: auto (by the memory budget), host (streamed to the GPU) or "
                    "device; forced for benchmarks and tests",
    )
    bounded_min: int | None = Field(
        default=None, ge=0,
        description="TIES / DARE tensors over this many entries are merged by the bounded radix-select path "
                    "whatever the budget (tests, or memory)",
    )
    prefix_sharing: bool = Field(
        default=True, description="score each shared context once (the same scores as lm-eval's); false: lm-eval's path",
    )
    native: bool = Field(
        default=True,
        description="run the CPU merges as compiled passes where a C compiler is found (the same arithmetic "
                    "as torch's, bit for bit); false: torch's kernels",
    )
    cache_dir: Path | None = Field(default=None, description="where those passes are compiled to; unset: ~/.cache/mergeopt")

    @field_validator("memory_budget", "bounded_min", "cache_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("native", "prefix_sharing", mode="before")
    @classmethod
    def _empty_is_on(cls, v):
        return True if isinstance(v, str) and not v.strip() else v

    @field_validator("memory_budget")
    @classmethod
    def _memory_budget(cls, v):
        if v is not None:
            # imports torch: only when the budget is set
            from evaluators.merging.memory_budget import parse

            parse(v)
        return v

    def evaluator_options(self):
        """The evaluators' share of these settings (evaluators/options.py): they never read the
        environment themselves."""
        from evaluators.options import EvaluatorOptions

        return EvaluatorOptions(memory_budget=self.memory_budget, pool_on=self.pool_on, bounded_min=self.bounded_min,
                                prefix_sharing=self.prefix_sharing, native=self.native, cache_dir=self.cache_dir)

    allow_hidden: bool = Field(
        default=False,
        description="let pools and tasks use hidden files and folders (names starting with '.') under the "
                    "roots; the service's own .env and database are refused whatever this says",
    )
    task_memory_mb: int = Field(
        default=4096, ge=64, le=1 << 22,
        description="memory (MiB of address space) of the child process that builds a study's tasks and "
                    "renders their templates (evaluators/security/task_box.py)",
    )
    task_cpu_s: int = Field(default=900, ge=1, le=86_400, description="CPU seconds of that child")
    task_wall_s: float = Field(default=1200.0, gt=0, le=86_400, description="wall-clock seconds of that child")
    task_renders_mb: int = Field(default=512, ge=1, le=1 << 16,
                                 description="MiB of rendered prompts the worker keeps from that child")

    def private_files(self) -> list[Path]:
        """Files the service reads its settings or secrets from, or keeps its data in: never
        readable through a pool or a task (evaluators/security/fileguard.py)."""
        files = [Path(".env").resolve()]
        if self.database_url.startswith("sqlite:///") and self.database_url != "sqlite:///:memory:":
            db = Path(self.database_url.removeprefix("sqlite:///")).resolve()
            files += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")]
        return files

    def guard_files(self) -> None:
        """Apply this service's file policy to every later open for a client (fileguard)."""
        from evaluators.security import fileguard

        fileguard.configure(allow_hidden=self.allow_hidden, private=self.private_files())

    def task_box(self):
        from evaluators.security.task_box import BoxLimits

        return BoxLimits(memory_mb=self.task_memory_mb, cpu_s=self.task_cpu_s, wall_s=self.task_wall_s,
                         renders_mb=self.task_renders_mb)

    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a connection whose request headers are not complete this long after it opened (or after "
                    "its previous response) is closed (`serve`)",
    )
    max_connections_per_client: int = Field(
        default=64, ge=1, le=100_000,
        description="open connections per client address (`serve`); more are closed at once",
    )
    export_disk_mb: int = Field(
        default=20_480, ge=1, le=1 << 30,
        description="disk (MiB) that export downloads being sent may hold in all; more get 429",
    )
    export_send_timeout_s: float = Field(
        default=60.0, gt=0, le=3600,
        description="a download whose client takes no data this long is dropped and its disk freed",
    )

    @field_validator("allowed_roots", "trusted_task_roots", mode="before")
    @classmethod
    def _roots(cls, v):
        if isinstance(v, str):
            v = [p for p in v.split(",") if p.strip()]
        return [Path(p).expanduser().resolve() for p in v]

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v):
        if isinstance(v, str):
            v = [h.strip() for h in v.split(",") if h.strip()]
        return [h.lower() for h in v]

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v):
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        return v


@functools.cache
def get_settings() -> Settings:
    return Settings()
