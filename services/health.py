"""The guide's ``HealthService``: one readiness report over every backend, the workers and the queues.

    report = await HealthService().check_all_services()      # as in the guide
    report = HealthService().check_all_services_sync()       # from plain code (CLI, tests)

The report is ``{"overall_status": "healthy"|"degraded"|"unhealthy", "services": {...}, "timestamp"}``:

- ``unhealthy`` when the broker (``message_queue``) does not answer: nothing can be enqueued or run;
- ``degraded`` when any other check fails (a backend down, no worker answering a ping, queue depths
  unreadable): work is accepted but some of it waits or retries;
- ``healthy`` otherwise.

Every check runs in its own daemon thread, bounded by ``HEALTH_CHECK_TIMEOUT`` (the worker ping by
``HEALTH_PING_TIMEOUT``), so one hung backend cannot hang readiness, and a check never raises: a failure
becomes ``{"status": "unhealthy", "error": ...}``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from config import QUEUES, Settings, get_settings

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"

#: The check whose failure makes the whole system unhealthy rather than degraded.
CRITICAL = "message_queue"

Check = Callable[[], Mapping[str, Any]]


def _message_queue() -> Mapping[str, Any]:
    from fabric.producer import get_message_queue

    return get_message_queue().health_check()


def _storage() -> Mapping[str, Any]:
    from services.storage import get_storage_service

    return get_storage_service().health_check()


def _search() -> Mapping[str, Any]:
    from services.search import get_search_service

    return get_search_service().health_check()


def _vector_db() -> Mapping[str, Any]:
    from services.vectors import get_vector_service

    return get_vector_service().health_check()


def _embeddings() -> Mapping[str, Any]:
    from services.embeddings import get_embedder

    return get_embedder().health_check()


def _cache() -> Mapping[str, Any]:
    from services.cache import get_cache

    return get_cache().health_check()


def _workers(timeout: float) -> Check:
    def check() -> Mapping[str, Any]:
        from fabric.producer import get_message_queue

        replies = get_message_queue().app.control.ping(timeout=timeout) or []
        names = sorted(name for reply in replies for name in reply)
        if not names:
            return {
                "status": UNHEALTHY,
                "workers": [],
                "error": f"no worker answered a ping within {timeout}s",
            }
        return {"status": HEALTHY, "workers": names, "count": len(names)}

    return check


def _queues() -> Mapping[str, Any]:
    from fabric.producer import get_message_queue

    queue = get_message_queue()
    depths = {}
    for name in QUEUES:
        stats = queue.queue_stats(name)
        depths[name] = {"pending": stats["pending"], "dead_lettered": stats["dead_lettered"]}
    return {"status": HEALTHY, "depths": depths}


def default_checks(settings: Settings | None = None) -> dict[str, tuple[Check, float]]:
    """The checks of every configured backend, the workers and the queue depths, each with its timeout."""
    settings = settings or get_settings()
    timeout = settings.health_check_timeout
    # The ping waits its whole timeout for replies; give the thread a little more than that.
    ping = settings.health_ping_timeout
    return {
        "message_queue": (_message_queue, timeout),
        "storage": (_storage, timeout),
        "search": (_search, timeout),
        "vector_db": (_vector_db, timeout),
        "embeddings": (_embeddings, timeout),
        "cache": (_cache, timeout),
        "workers": (_workers(ping), ping + timeout),
        "queues": (_queues, timeout),
    }


def run_check(check: Check, timeout: float) -> dict[str, Any]:
    """Run one ``check`` in a daemon thread for at most ``timeout`` seconds.

    Returns the check's own answer plus ``latency_ms``; an exception or a timeout becomes
    ``{"status": "unhealthy", "error": ...}``. Never raises. A check that overruns keeps its daemon thread
    until it ends by itself (threads cannot be killed), but nobody waits for it.
    """
    outcome: dict[str, Any] = {}
    started = time.perf_counter()

    def target() -> None:
        try:
            outcome["answer"] = dict(check())
        except Exception as exc:  # a health check reports every failure as a status; that is its job
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name="health-check", daemon=True)
    thread.start()
    thread.join(timeout)
    latency = round((time.perf_counter() - started) * 1000, 2)
    if thread.is_alive():
        return {"status": UNHEALTHY, "error": f"no answer within {timeout}s", "latency_ms": latency}
    if "error" in outcome:
        return {"status": UNHEALTHY, "error": outcome["error"], "latency_ms": latency}
    answer: dict[str, Any] = outcome["answer"]
    if answer.get("status") not in (HEALTHY, UNHEALTHY):
        answer = {**answer, "status": UNHEALTHY, "error": f"check answered status {answer.get('status')!r}"}
    return {**answer, "latency_ms": answer.get("latency_ms", latency)}


def overall_status(services: Mapping[str, Mapping[str, Any]]) -> str:
    """``unhealthy`` if the broker check failed, ``degraded`` if any other did, else ``healthy``."""
    if services.get(CRITICAL, {}).get("status") != HEALTHY:
        return UNHEALTHY
    if any(result.get("status") != HEALTHY for result in services.values()):
        return DEGRADED
    return HEALTHY


class HealthService:
    """Readiness of the whole system. ``checks`` maps a name to ``(check, timeout_seconds)``; the default is
    :func:`default_checks` (read from settings when the service is built)."""

    def __init__(self, checks: Mapping[str, tuple[Check, float]] | None = None) -> None:
        self.checks = dict(checks) if checks is not None else default_checks()

    def check_all_services_sync(self) -> dict[str, Any]:
        """Run every check at once (each in its own thread, each bounded by its timeout).

        Returns ``{"overall_status", "services": {name: {"status", ..., "latency_ms"}}, "timestamp"}``.
        Never raises.
        """
        results: dict[str, dict[str, Any]] = {}
        threads = []
        for name, (check, timeout) in self.checks.items():

            def target(name: str = name, check: Check = check, timeout: float = timeout) -> None:
                results[name] = run_check(check, timeout)

            thread = threading.Thread(target=target, name=f"health-{name}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            # run_check returns within its own timeout, so this join ends too.
            thread.join()
        services = {name: results[name] for name in self.checks}
        return {
            "overall_status": overall_status(services),
            "services": services,
            "timestamp": datetime.now(UTC).isoformat(),
        }

    async def check_all_services(self) -> dict[str, Any]:
        """The guide's form: :meth:`check_all_services_sync` without blocking the event loop."""
        return await asyncio.to_thread(self.check_all_services_sync)
