"""Liveness (no backend calls, no key) and readiness (every check of :mod:`services.health`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import READ
from api.schemas import AUTH, Liveness, Readiness, error_responses
from services.health import UNHEALTHY, HealthService

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> Liveness:
    """Liveness: the process answers. Calls no backend and needs no key."""
    return Liveness(status="ok")


@router.get(
    "/ready",
    dependencies=[READ],
    response_model=Readiness,
    responses={
        **error_responses(*AUTH),
        # Unlike other routes' 503, this one is the report itself (its checks never raise).
        503: {"model": Readiness, "description": "the broker is down: nothing can be enqueued or run"},
    },
)
async def ready() -> JSONResponse:
    """Readiness: every backend, the workers and the queue depths. 200 when healthy or degraded (work is
    accepted), 503 when unhealthy (the broker is down)."""
    report: dict[str, Any] = await HealthService().check_all_services()
    status = 503 if report["overall_status"] == UNHEALTHY else 200
    return JSONResponse(report, status_code=status)
