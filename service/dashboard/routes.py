"""HTML pages of the dashboard. The pages are shells: the browser fills them from /v1 (reads
carry the bearer token from sessionStorage when MERGEOPT_PROTECT_READS is set)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from service.api.deps import DB, Cfg
from service.db.models import Study
from service.studies import registry

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

# Same-origin only: no inline script, no third-party anything, not framable.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _asset_version() -> str:
    """Changes whenever a static file does, so browsers never run a stale dashboard.js."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


VERSION = _asset_version()


def _page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    settings = request.app.state.settings
    root = request.scope.get("root_path", "").rstrip("/")
    context = {"root": root, "version": VERSION, "protect_reads": settings.protect_reads, **context}
    return templates.TemplateResponse(request, template, context, status_code=status, headers=HEADERS)


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    return _page(request, "studies.html")


@router.get("/studies/{key}", response_class=HTMLResponse)
def study_page(request: Request, key: str, session: DB, settings: Cfg) -> HTMLResponse:
    name = key
    if not settings.protect_reads:  # with protected reads the page must not say whether it exists
        try:
            name = registry.get_row(session, Study, key).name
        except registry.NotFound as exc:
            return _page(request, "missing.html", status=404, key=key, reason=str(exc))
    return _page(request, "study.html", key=name)
