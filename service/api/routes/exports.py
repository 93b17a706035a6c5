"""/v1/studies/{key}/trials/{number}/export: a completed trial's merge, written to a folder on
the server (POST) or downloaded as a .tar.gz (GET). Built on the API's CPU, capped and rate-limited
(export_gate.py), the download's disk bounded (downloads.py)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse

from optimizer.spec import parse_spec
from service.api.deps import READ, WRITE, Cfg, v1_router
from service.api.downloads import prepared
from service.api.export_gate import client_of, export_gate
from service.api.schemas import ExportOut, ExportRequest, Problem
from service.settings import Settings
from service.studies import views
from service.studies.external import find_study
from service.studies.paths import PathNotAllowed, guard_path

router = v1_router()
EXPORT_RESPONSES = {429: {"model": Problem, "description": "Too many exports at once, or from this client this minute"}}


def _export(settings: Settings, key: str, number: int, out_dir: Path, out_roots: list[Path]) -> Path:
    """The merge of a completed trial, on the API's CPU (never a worker's device), reading pool
    files only inside the allowed roots and writing only under ``out_roots`` (both checked as
    the files are opened). The database session is closed before the merge: it takes minutes."""
    from evaluators.pool.validation import PoolFileRefused
    from evaluators.security.fileguard import FileRefused, TargetExists
    from service.db.session import session_factory
    from service.studies.runs import export_trial

    with session_factory(settings.database_url)() as session:
        row = find_study(session, key)
    study = views.optuna_study(row, settings.database_url)
    state = next((t.state.name for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if state is None:
        raise HTTPException(404, f"study '{key}' has no trial {number}")
    if state != "COMPLETE":
        raise HTTPException(409, f"trial {number} is {state}, only completed trials are exported")
    try:
        return export_trial(study, parse_spec(row.spec), number, out_dir, progress=False,
                            roots=settings.allowed_roots, out_roots=out_roots, device="cpu",
                            options=settings.evaluator_options())
    except (FileRefused, PoolFileRefused) as exc:
        raise PathNotAllowed(str(exc)) from exc
    except TargetExists as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/studies/{key}/trials/{number}/export", status_code=201, response_model=ExportOut, dependencies=WRITE,
             responses=EXPORT_RESPONSES)
def export_to_path(key: str, number: int, body: ExportRequest, request: Request, settings: Cfg):
    out = guard_path(body.out_dir, settings.allowed_roots, what="out_dir")
    if out.exists() and not out.is_dir():
        raise HTTPException(409, f"out_dir {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        raise HTTPException(409, f"out_dir {out} exists and is not empty")
    # Checked again where it is written (evaluators/security/fileguard.py): a link swapped in meanwhile is refused.
    # Capped, not rate-limited: the caller holds a write token.
    with export_gate(request).slot(None):
        path = _export(settings, key, number, out, settings.allowed_roots)
    path = guard_path(path, settings.allowed_roots, what="out_dir")  # the listing stays inside the roots too
    return ExportOut(path=str(path), files=sorted(p.name for p in path.iterdir()))


@router.get("/studies/{key}/trials/{number}/export", dependencies=READ, response_class=FileResponse,
            responses=EXPORT_RESPONSES)
def export_archive(key: str, number: int, request: Request, settings: Cfg):
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"{key}-trial{number}")
    with export_gate(request).slot(client_of(request)):
        tmp = Path(tempfile.mkdtemp(prefix="mergeopt-export-")).resolve()  # compared with real paths
        try:
            path = _export(settings, key, number, tmp / name, [tmp])
            archive = tmp / f"{name}.tar.gz"
            # Level 1: safetensors floats barely compress, and level 9 costs the CPU minutes per GB.
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                tar.add(path, arcname=name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return prepared(archive, path, tmp, request)  # disk bounded, freed on disconnect or stall (downloads.py)
