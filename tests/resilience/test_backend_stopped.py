"""A backend stopped mid-run, with real workers: the Elasticsearch adapter's breaker opens for every
process (state in Redis), a process that never saw a failure fails fast without calling the backend, tasks
retry, and once the backend is back every message is indexed and none is dead-lettered.

"Stopped" is ``SIGSTOP`` of osmem-server (a hung backend: requests time out); ``SIGCONT`` brings it back
with its in-memory data, so what was indexed before the stop can be counted after it.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config import reload_settings
from fabric.producer import MessageQueue
from services import metrics
from services.health import HealthService
from services.resilience import KEY_PREFIX, CircuitOpen, reset_breakers
from services.search import reset_search_service
from services.search.elasticsearch import ElasticsearchSearchService
from tests.support.opensearch import OsmemBehindProxy
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess

TASK = "indexing_tasks.index_workflow"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[OsmemBehindProxy]:
    server = OsmemBehindProxy(tmp_path / "osmem").start()
    yield server
    if server.server.proc is not None:
        os.kill(server.server.proc.pid, signal.SIGCONT)  # never leave it frozen for stop()
    server.stop()


def workflow(i: int, tag: str) -> dict[str, object]:
    return {"action": "index_workflow", "workflow": {"id": f"wf-{tag}-{i}", "name": f"flow {tag} {i}"}}


def retries(error: str) -> float:
    registry = metrics.fleet_registry()
    return registry.get_sample_value("wft_task_retries_total", {"task": TASK, "error": error}) or 0.0


def test_stopped_backend_opens_the_shared_breaker_and_nothing_is_lost(
    tmp_path: Path,
    mq: MessageQueue,
    backend: OsmemBehindProxy,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix = f"bs{tag}-"
    env = {
        "SEARCH_BACKEND": "elasticsearch",
        "ELASTICSEARCH_URL": backend.url,
        "ELASTICSEARCH_INDEX_PREFIX": prefix,
        "ELASTICSEARCH_TIMEOUT": "1",
        "ELASTICSEARCH_MAX_RETRIES": "0",
        "CIRCUIT_FAILURE_THRESHOLD": "3",
        "CIRCUIT_TIMEOUT": "2",
        "CIRCUIT_WINDOW": "60",
        "MAX_RETRIES": "200",
        "RETRY_BACKOFF_MAX": "1",
    }
    # One node, two prefork processes: each has its own client and its own breaker object.
    worker = WorkerProcess(tmp_path / "workers", ["indexing_tasks", "dead_letter"], concurrency=2, env=env)
    worker.start()
    try:
        worker.wait_ready(mq.app, timeout=60)
        before = [mq.enqueue("indexing_tasks", workflow(i, tag)) for i in range(5)]
        wait_until(lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in before), timeout=60,
                   what="the first messages to be indexed")  # fmt: skip

        assert backend.server.proc is not None
        os.kill(backend.server.proc.pid, signal.SIGSTOP)
        during = [mq.enqueue("indexing_tasks", workflow(i, tag)) for i in range(5, 25)]
        breaker = f"{KEY_PREFIX}elasticsearch@{backend.url}:"
        # OPEN is a key whose expiry is CIRCUIT_TIMEOUT. Wait for one with more than a second left, so the
        # observer below runs while it is open, not half-open (where it could take the probe itself).
        wait_until(lambda: redis_client.pttl(breaker + "open") > 1000, timeout=60,
                   what="the workers to open the Elasticsearch breaker in Redis")  # fmt: skip
        assert redis_client.pttl(breaker + "open") <= 2000

        # This process never called Elasticsearch, yet it fails fast: the state is shared.
        reset_breakers()
        observer = ElasticsearchSearchService(
            backend.url, index_prefix=prefix, request_timeout=1, max_retries=0
        )
        assert backend.proxy is not None
        reached = backend.proxy.requests
        with pytest.raises(CircuitOpen):
            observer.count("workflows")
        assert backend.proxy.requests == reached, "an open breaker let a call through to the backend"
        observer.close()

        # Readiness, as the API's /ready computes it in this process, says degraded while search is down.
        for name in (
            "SEARCH_BACKEND",
            "ELASTICSEARCH_URL",
            "ELASTICSEARCH_INDEX_PREFIX",
            "ELASTICSEARCH_TIMEOUT",
        ):
            monkeypatch.setenv(name, env[name])
        reload_settings()
        reset_search_service()
        report = HealthService().check_all_services_sync()
        assert report["services"]["search"]["status"] == "unhealthy"
        assert report["overall_status"] == "degraded"

        # The workers' tasks fail fast too and are retried (not dead-lettered) while it is down.
        wait_until(lambda: retries("CircuitOpen") >= 5, timeout=60, what="tasks to retry on the open breaker")
        assert retries("BackendUnavailable") >= 3  # the failures that opened it
        assert all(mq.get_status(m)["state"] != "SUCCESS" for m in during)
        assert mq.dead_letters.count("indexing_tasks") == 0

        os.kill(backend.server.proc.pid, signal.SIGCONT)
        wait_until(lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in during), timeout=120,
                   what="every message enqueued during the outage to be indexed")  # fmt: skip
        search = ElasticsearchSearchService(backend.url, index_prefix=prefix)
        assert search.count("workflows") == 25
        assert {d["id"] for d in search.search_workflows(tag, limit=100)} == {
            f"wf-{tag}-{i}" for i in range(25)
        }
        search.close()
        assert mq.dead_letters.count("indexing_tasks") == 0
        # A probe succeeded and closed the breaker for everyone.
        assert not redis_client.exists(breaker + "open", breaker + "tripped")
    finally:
        if backend.server.proc is not None:
            os.kill(backend.server.proc.pid, signal.SIGCONT)
        worker.stop()
