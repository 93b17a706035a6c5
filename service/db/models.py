"""The service's own tables (SQLAlchemy 2.0). Optuna's search state lives in the same database
under Optuna's table names; ours are prefixed ``mergeopt_`` so the two never collide."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Base(DeclarativeBase):
    pass


class Pool(Base):
    __tablename__ = "mergeopt_pools"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base: Mapped[str | None] = mapped_column(Text)
    checkpoints: Mapped[list] = mapped_column(JSON)
    fingerprint: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Suite(Base):
    __tablename__ = "mergeopt_suites"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    include_path: Mapped[str | None] = mapped_column(Text)
    tasks: Mapped[list] = mapped_column(JSON)
    limit: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer, default=32)
    validation: Mapped[float] = mapped_column(Float, default=0.4, server_default="0.4")  # fraction or count
    include_defaults: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Study(Base):
    __tablename__ = "mergeopt_studies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # also the Optuna study name
    pool_id: Mapped[str] = mapped_column(ForeignKey("mergeopt_pools.id"))
    suite_id: Mapped[str] = mapped_column(ForeignKey("mergeopt_suites.id"))
    spec: Mapped[dict] = mapped_column(JSON)  # the full StudySpec, storage = the service DB
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    n_trials: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Set-up (references, baselines) finished; its work units and their claims live in Optuna's
    # study attributes (optimizer/setup.py), so no worker owns it as a whole.
    prepared: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class Trial(Base):
    """Mirror of each Optuna trial as the workers saw it (Optuna's tables stay the truth)."""

    __tablename__ = "mergeopt_trials"
    __table_args__ = (UniqueConstraint("study_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("mergeopt_studies.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16), default="search")
    label: Mapped[str] = mapped_column(String(128), default="")
    candidate: Mapped[dict] = mapped_column(JSON, default=dict)
    raw: Mapped[dict] = mapped_column(JSON, default=dict)
    normalized: Mapped[dict] = mapped_column(JSON, default=dict)
    objective: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class Event(Base):
    """Append-only: what the SSE endpoint streams (workers may live in other processes)."""

    __tablename__ = "mergeopt_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("mergeopt_studies.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
