"""The FastAPI application: /v1 routes, OpenAPI at /docs, user errors as 4xx with a reason."""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from evaluators.merging.mergekit_yaml import MergeConfigError
from evaluators.pool.validation import PoolError, PoolFileRefused
from evaluators.scoring.suite_scorer import SuiteError
from evaluators.scoring.task_files import TaskFileRefused
from optimizer.spec import SpecError
from service.api.event_hub import EventHub
from service.api.guards import RequestGuard
from service.api.routes import events, exports, health, pools, studies, suites, trials
from service.dashboard import STATIC_DIR
from service.dashboard import router as dashboard_router
from service.db.migrate import upgrade
from service.settings import Settings, get_settings
from service.studies.paths import PathNotAllowed
from service.studies.registry import Conflict, NotFound

log = logging.getLogger(__name__)
ERRORS: dict[type[Exception], int] = {
    NotFound: 404,
    Conflict: 409,
    PathNotAllowed: 403,
    TaskFileRefused: 403,  # a SuiteError (the worker fails the study on it); here a refusal
    PoolFileRefused: 403,  # a PoolError likewise: a pool file leading out of the roots
    SpecError: 422,
    PoolError: 422,
    SuiteError: 422,
    MergeConfigError: 422,
}


def create_app(settings: Settings | None = None, *, worker: bool = False, migrate: bool = True,
               freeze_gc: bool = False) -> FastAPI:
    settings = settings or get_settings()
    settings.guard_files()  # no client reads the service's .env, its database or (by default) hidden files

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if migrate:
            upgrade(settings.database_url)
        stop = threading.Event()
        thread = None
        if worker:
            from service.worker.runtime import Worker  # torch, transformers: before the freeze
        if freeze_gc:
            # What start-up created (millions of objects) lives as long as the server: outside
            # the collector, full collections pause requests for tens of ms, not a quarter second.
            gc.freeze()
        if worker:
            w = Worker(settings, stop=stop)
            thread = threading.Thread(target=w.run_forever, name="mergeopt-worker", daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=30)

    app = FastAPI(
        title="mergeopt",
        version="1",
        description="Black-box merge-weight optimization: pools, suites, studies, trials, Pareto fronts.",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.state.events = EventHub(settings)  # open event streams: their caps and their one poll loop
    app.add_middleware(RequestGuard, settings=settings)  # Host, token, then the body (guards.py)
    for resource in (pools, suites, studies, trials, events, exports, health):  # in the order of the docs
        app.include_router(resource.router)
    app.include_router(dashboard_router)  # the web dashboard: / and /studies/{key}
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    for exc_type, status in ERRORS.items():
        app.add_exception_handler(exc_type, _handler(status))
    app.add_exception_handler(RequestValidationError, _invalid_request)

    return app


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without the echoed input: NaN/Infinity (which Python's JSON parser accepts)
    cannot be written back as JSON (a 500 instead of the 422), and a huge body would be echoed."""
    errors = [{k: v for k, v in err.items() if k != "input"} for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _handler(status: int):
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handle
