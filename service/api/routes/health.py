"""/healthz: for load balancers and compose health checks (not in the OpenAPI schema)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict:
    return {"ok": True}
