"""Readiness: the overall status rules, bounded checks, a real broker stopped, and no worker answering."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from services.health import HealthService, overall_status, run_check
from tests.api.conftest import ApiServer
from tests.support.servers import RedisServer


def _ok() -> Mapping[str, Any]:
    return {"status": "healthy"}


def _down() -> Mapping[str, Any]:
    raise ConnectionError("refused")


def test_overall_status_rules() -> None:
    assert (
        overall_status({"message_queue": {"status": "healthy"}, "search": {"status": "healthy"}}) == "healthy"
    )
    assert overall_status({"message_queue": {"status": "healthy"}, "workers": {"status": "unhealthy"}}) == (
        "degraded"
    )
    assert overall_status({"message_queue": {"status": "unhealthy"}, "search": {"status": "healthy"}}) == (
        "unhealthy"
    )


def test_a_hung_or_failing_check_is_reported_not_raised() -> None:
    release = threading.Event()

    def hangs() -> Mapping[str, Any]:
        release.wait(30)
        return {"status": "healthy"}

    try:
        service = HealthService({"message_queue": (_ok, 5), "search": (hangs, 0.2), "vector_db": (_down, 5)})
        report = asyncio.run(service.check_all_services())
    finally:
        release.set()
    assert report["overall_status"] == "degraded"
    assert report["services"]["search"]["status"] == "unhealthy"
    assert "no answer within 0.2s" in report["services"]["search"]["error"]
    assert report["services"]["vector_db"] == {
        "status": "unhealthy",
        "error": "ConnectionError: refused",
        "latency_ms": report["services"]["vector_db"]["latency_ms"],
    }
    assert report["timestamp"]
    assert run_check(lambda: {"status": "green"}, 1)["status"] == "unhealthy"


def test_no_worker_is_degraded_and_a_stopped_broker_is_unhealthy(own_broker: RedisServer) -> None:
    report = HealthService().check_all_services_sync()
    assert report["services"]["message_queue"]["status"] == "healthy"
    assert report["services"]["workers"]["status"] == "unhealthy"
    assert "no worker answered" in report["services"]["workers"]["error"]
    assert report["overall_status"] == "degraded"

    own_broker.stop()
    report = HealthService().check_all_services_sync()
    assert report["overall_status"] == "unhealthy"
    for name in ("message_queue", "cache", "queues", "workers"):
        assert report["services"][name]["status"] == "unhealthy", name
    # the embedded backends do not need the broker
    assert report["services"]["storage"]["status"] == "healthy"
    assert report["services"]["search"]["status"] == "healthy"


def test_ready_route_says_degraded_without_workers_and_health_needs_nothing(
    api: httpx.Client, api_server: ApiServer
) -> None:
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json()["overall_status"] == "degraded"
    assert response.json()["services"]["workers"]["status"] == "unhealthy"
    assert httpx.get(f"{api_server.url}/health").json() == {"status": "ok"}
