"""Fleet metrics from real workers: outcomes, durations, retries, dead letters and queue depths, scraped
over HTTP from ``serve()`` and from ``python -m services.metrics``."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from services import metrics
from services.message_queue import MessageQueue
from services.redis_client import reset_redis
from tests.support.servers import ManagedProcess, free_port, port_open, wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def worker(tmp_path: Path, mq: MessageQueue) -> Iterator[WorkerProcess]:
    # Short retries so a transient failure is dead-lettered within seconds.
    env = {"MAX_RETRIES": "1", "RETRY_BACKOFF_MAX": "1"}
    proc = WorkerProcess(tmp_path / "workers", ["indexing_tasks", "dead_letter"], concurrency=2, env=env)
    proc.start()
    proc.wait_ready(mq.app, timeout=60)
    yield proc
    proc.stop()


@pytest.fixture
def metrics_url() -> Iterator[str]:
    port = free_port()
    server, thread = metrics.serve(port)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_run_is_counted_by_outcome_with_durations_retries_dead_letters_and_depths(
    mq: MessageQueue, worker: WorkerProcess, metrics_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    ok = [mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "value": i}) for i in range(3)]
    bad = mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "fail": "permanent"})
    flaky = mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "fail": "transient"})
    # Nobody consumes analytics_tasks here: these wait in the broker.
    for _ in range(4):
        mq.enqueue("analytics_tasks", {"action": "probe", "tag": tag})

    def settled() -> bool:
        states = {mq.get_status(m)["state"] for m in ok} | {mq.get_status(m)["state"] for m in (bad, flaky)}
        return states == {"SUCCESS", "DEAD_LETTERED"}

    wait_until(settled, timeout=60, what="the probes to succeed or be dead-lettered")
    task = "testing.probe"

    def counted() -> bool:
        samples = scrape(metrics_url)
        return (
            value(samples, "wft_dead_letters_total", queue="indexing_tasks", reason="retries_exhausted") == 1
        )

    wait_until(counted, timeout=30, what="the dead letters to be counted")
    samples = scrape(metrics_url)
    assert value(samples, "wft_metrics_redis_up") == 1
    assert value(samples, "wft_task_outcomes_total", task=task, outcome="success") == 3
    assert value(samples, "wft_task_outcomes_total", task=task, outcome="dead_lettered") == 2
    assert value(samples, "wft_task_outcomes_total", task=task, outcome="retry") == 1
    assert value(samples, "wft_task_retries_total", task=task, error="TransientError") == 1
    assert value(samples, "wft_dead_letters_total", queue="indexing_tasks", reason="permanent") == 1
    assert value(samples, "wft_task_outcomes_total", task="dead_letter.store", outcome="success") == 2
    # 3 successes, 1 permanent failure, the transient one twice (first run and its retry).
    assert value(samples, "wft_task_duration_seconds_count", task=task) == 6
    assert value(samples, "wft_task_duration_seconds_bucket", task=task, le="+Inf") == 6
    assert value(samples, "wft_task_duration_seconds_sum", task=task) > 0
    assert value(samples, "wft_queue_depth", queue="analytics_tasks") == 4
    assert value(samples, "wft_queue_depth", queue="indexing_tasks") == 0
    assert value(samples, "wft_queue_dead_lettered", queue="indexing_tasks") == 2


def test_recording_is_cumulative_in_redis_and_buckets_are_cumulative(
    redis_client: redis.Redis, metrics_url: str
) -> None:
    reset_redis()
    metrics.record_task("t.a", "success", 0.003)
    metrics.record_task("t.a", "success", 0.2)
    metrics.record_task("t.a", "failure", 400.0)
    samples = scrape(metrics_url)
    assert value(samples, "wft_task_duration_seconds_bucket", task="t.a", le="0.005") == 1
    assert value(samples, "wft_task_duration_seconds_bucket", task="t.a", le="0.25") == 2
    assert value(samples, "wft_task_duration_seconds_bucket", task="t.a", le="300.0") == 2
    assert value(samples, "wft_task_duration_seconds_bucket", task="t.a", le="+Inf") == 3
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.record_task("t.a", "exploded", 1.0)


def test_redis_down_never_fails_recording_and_scrape_says_so() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    metrics.record_task("t.b", "success", 0.1, client=dead)  # logged, not raised
    registry = metrics.fleet_registry(dead)
    assert registry.get_sample_value("wft_metrics_redis_up") == 0
    dead.close()


def test_module_serves_the_fleet_metrics(tmp_path: Path, redis_client: redis.Redis) -> None:
    port = free_port()
    proc = ManagedProcess(
        [sys.executable, "-m", "services.metrics", "--port", str(port)], tmp_path, "metrics"
    )
    proc.workdir = REPO_ROOT  # run from the repository root, where the packages are
    proc.log_path = tmp_path / "metrics.log"
    proc.start()
    try:
        wait_until(lambda: port_open(port), timeout=20, what="python -m services.metrics to listen")
        metrics.record_task("t.c", "success", 0.01)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "wft_task_outcomes_total", task="t.c", outcome="success") == 1
        assert value(samples, "wft_queue_depth", queue="workflow_execution") == 0
    finally:
        proc.stop()


def test_asgi_app_for_the_api_serves_the_same_metrics(redis_client: redis.Redis) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    reset_redis()
    metrics.record_task("t.d", "retry", 0.5)
    api = FastAPI()
    api.mount("/metrics", metrics.make_asgi_app())
    with TestClient(api) as client:
        response = client.get("/metrics/")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["wft_task_outcomes"].samples[0].labels == {"task": "t.d", "outcome": "retry"}
    assert "wft_queue_depth" in families
