"""Fleet metrics from real workers: outcomes, durations, retries, dead letters, queue depths and workflow
executions (by status, counted once per execution id, with execution and step durations), scraped over HTTP
from ``serve()`` and from ``python -m services.metrics``."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from fabric.producer import MessageQueue
from fabric.redis_clients import reset_redis
from services import metrics
from tests.support.fleet import StartWorker
from tests.support.servers import ManagedProcess, free_port, port_open, wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess
from workflows.model import ExecutionRecord, ExecutionStatus, utcnow
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository

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
        # Workers add their task tallies to Redis every METRICS_FLUSH_INTERVAL: wait for the last ones.
        samples = scrape(metrics_url)
        return (
            value(samples, "wft_dead_letters_total", queue="indexing_tasks", reason="retries_exhausted") == 1
            and value(samples, "wft_task_outcomes_total", task="dead_letter.store", outcome="success") == 2
            and value(samples, "wft_task_duration_seconds_count", task=task) == 6
        )

    wait_until(counted, timeout=30, what="the dead letters and every task outcome to be counted")
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


def test_a_workers_tally_reaches_redis_within_the_flush_interval(
    redis_client: redis.Redis, metrics_url: str
) -> None:
    reset_redis()
    for duration in (0.003, 0.2):
        metrics.count_task("t.e", "success", duration)
    metrics.count_task("t.e", "ignored", None)
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.count_task("t.e", "exploded", 1.0)

    def landed() -> bool:
        samples = scrape(metrics_url)
        return (
            value(samples, "wft_task_outcomes_total", task="t.e", outcome="success") == 2
            and value(samples, "wft_task_outcomes_total", task="t.e", outcome="ignored") == 1
        )

    wait_until(landed, timeout=10, what="the tally to be added to Redis by its thread")
    samples = scrape(metrics_url)
    assert value(samples, "wft_task_duration_seconds_count", task="t.e") == 2
    assert value(samples, "wft_task_duration_seconds_bucket", task="t.e", le="0.005") == 1
    assert abs(value(samples, "wft_task_duration_seconds_sum", task="t.e") - 0.203) < 1e-9


def test_a_tally_redis_refused_is_kept_for_the_next_flush(redis_client: redis.Redis) -> None:
    tally = metrics.TaskTally(interval=3600)  # no flush but the ones below
    tally.tally("t.f", "failure", 1.0)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    tally.flush(dead)  # logged, not raised, and nothing is lost
    tally.tally("t.f", "failure", 2.0)
    tally.flush(redis_client)
    assert redis_client.hget(metrics.OUTCOMES_KEY, "t.f|failure") == b"2"
    assert float(redis_client.hget(metrics.DURATION_KEY + "t.f", "sum") or 0) == 3.0
    tally.flush(redis_client)  # an empty tally writes nothing
    assert redis_client.hget(metrics.OUTCOMES_KEY, "t.f|failure") == b"2"
    dead.close()


def test_a_stopping_worker_adds_its_last_tally(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # Its thread never flushes within the test: only the flush at exit can bring the counts.
    worker = start_worker(["indexing_tasks"], concurrency=1, env={"METRICS_FLUSH_INTERVAL": "60"})
    tag = uuid.uuid4().hex[:8]
    ids = [mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "value": i}) for i in range(3)]
    wait_until(lambda: all(mq.get_status(i)["state"] == "SUCCESS" for i in ids), timeout=60,
               what="the probes to succeed")  # fmt: skip
    assert redis_client.hget(metrics.OUTCOMES_KEY, "testing.probe|success") is None  # still tallied
    worker.stop()
    assert redis_client.hget(metrics.OUTCOMES_KEY, "testing.probe|success") == b"3"


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
    from prometheus_client import make_asgi_app

    reset_redis()
    metrics.record_task("t.d", "retry", 0.5)
    api = FastAPI()
    api.mount("/metrics", make_asgi_app(registry=metrics.fleet_registry()))
    with TestClient(api) as client:
        response = client.get("/metrics/")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["wft_task_outcomes"].samples[0].labels == {"task": "t.d", "outcome": "retry"}
    assert "wft_queue_depth" in families


# --- workflow executions ---------------------------------------------------------------------------------


def _flow(workflow_id: str, delay: float = 0) -> dict[str, Any]:
    """input (requires ``x``) -> process (sleeps ``delay`` s) -> output: an input without ``x`` fails."""
    return {
        "id": workflow_id,
        "name": f"metrics {workflow_id}",
        "definition": {
            "nodes": [
                {"id": "in", "type": "input", "data": {"required": ["x"]}},
                {
                    "id": "wait",
                    "type": "process",
                    "data": {"operation": "delay", "params": {"seconds": delay}},
                },
                {"id": "out", "type": "output", "data": {}},
            ],
            "edges": [{"source": "in", "target": "wait"}, {"source": "wait", "target": "out"}],
        },
    }


def test_executions_are_counted_by_workflow_and_status_once_with_execution_and_step_durations(
    mq: MessageQueue, start_worker: StartWorker, metrics_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    quick, slow = f"quick-{run}", f"slow-{run}"
    pipelines = Pipelines(queue=mq)
    pipelines.register_workflow(_flow(quick))
    pipelines.register_workflow(_flow(slow, delay=2))
    repo = WorkflowRepository()
    executor = start_worker(["workflow_execution"], concurrency=2)

    completed = [pipelines.request_execution(quick, {"x": i}) for i in range(3)]
    failed = [pipelines.request_execution(quick, {}) for _ in range(2)]
    cancelled = f"cancelled-{run}"
    pipelines.cancel_execution(cancelled)  # asked before it starts: it stops before its first step
    pipelines.request_execution(quick, {"x": 0}, execution_id=cancelled)

    def finished(ids: list[str]) -> bool:
        records = [repo.get_execution(i) for i in ids]
        return all(r is not None and r.status.finished for r in records)

    wait_until(lambda: finished([*completed, *failed, cancelled]), timeout=60, what="the executions")

    # kill -9 of the pool child mid-execution: the message is redelivered and runs again from the start.
    killed = pipelines.request_execution(slow, {"x": 1})

    def running() -> bool:
        record = repo.get_execution(killed)
        return record is not None and record.status is ExecutionStatus.RUNNING

    wait_until(running, timeout=30, what="the slow execution to start")
    for child in executor.child_pids():
        os.kill(child, signal.SIGKILL)
    wait_until(lambda: finished([killed]), timeout=60, what="the redelivered execution to finish")

    # A second message for a finished execution (what a redelivery after the record was stored looks like
    # to the worker) returns the recorded result and counts nothing.
    again = [
        pipelines.request_execution(quick, {"x": 0}, execution_id=eid) for eid in (completed[0], failed[0])
    ]
    wait_until(
        lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in again), timeout=30, what="the repeats"
    )

    samples = scrape(metrics_url)

    def executions(workflow: str, status: str) -> float:
        return value(samples, "wft_workflow_executions_total", workflow=workflow, status=status)

    assert executions(quick, "completed") == 3
    assert executions(quick, "failed") == 2
    assert executions(quick, "cancelled") == 1
    assert executions(slow, "completed") == 1
    assert executions(slow, "failed") == executions(slow, "cancelled") == 0
    assert value(samples, "wft_workflow_execution_duration_seconds_count", workflow=quick) == 6
    assert value(samples, "wft_workflow_execution_duration_seconds_count", workflow=slow) == 1
    # The slow one sleeps 2 s in its delay step: its execution and step time show it.
    assert value(samples, "wft_workflow_execution_duration_seconds_sum", workflow=slow) >= 2
    assert value(samples, "wft_workflow_execution_duration_seconds_bucket", workflow=slow, le="1.0") == 0
    assert value(samples, "wft_workflow_execution_duration_seconds_bucket", workflow=slow, le="5.0") == 1

    def steps(workflow: str, step_type: str) -> float:
        return value(
            samples, "wft_workflow_step_duration_seconds_count", workflow=workflow, step_type=step_type
        )

    # The input step ran in all 5 quick executions that started (failing in 2); the cancelled one ran none.
    assert steps(quick, "input") == 5
    assert steps(quick, "process") == steps(quick, "output") == 3
    assert steps(slow, "input") == steps(slow, "process") == steps(slow, "output") == 1
    assert value(samples, "wft_workflow_step_duration_seconds_sum", workflow=slow, step_type="process") >= 2


def test_a_stored_record_its_worker_never_counted_is_counted_by_the_redelivery(
    mq: MessageQueue, start_worker: StartWorker, metrics_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    workflow = f"stored-{run}"
    pipelines = Pipelines(queue=mq)
    pipelines.register_workflow(_flow(workflow))
    # What a worker killed between storing the record and counting it leaves behind.
    now = utcnow()
    recent = ExecutionRecord(
        execution_id=f"recent-{run}", workflow_id=workflow, status=ExecutionStatus.FAILED,
        started_at=now - dt.timedelta(seconds=3), completed_at=now,
    )  # fmt: skip
    # One that finished long before the counted window: counted back then, so not again.
    old_end = now - dt.timedelta(seconds=3 * metrics.counted_window())
    old = recent.model_copy(
        update={"execution_id": f"old-{run}", "started_at": old_end, "completed_at": old_end}
    )
    repo = WorkflowRepository()
    repo.save_execution(recent)
    repo.save_execution(old)
    start_worker(["workflow_execution"])
    ids = [
        pipelines.request_execution(workflow, {"x": 1}, execution_id=r.execution_id) for r in (recent, old)
    ]
    ids.append(pipelines.request_execution(workflow, {"x": 1}, execution_id=recent.execution_id))
    wait_until(lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in ids), timeout=30, what="the runs")
    samples = scrape(metrics_url)
    assert value(samples, "wft_workflow_executions_total", workflow=workflow, status="failed") == 1
    assert value(samples, "wft_workflow_executions_total", workflow=workflow, status="completed") == 0
    assert value(samples, "wft_workflow_execution_duration_seconds_count", workflow=workflow) == 1
    assert value(samples, "wft_workflow_execution_duration_seconds_bucket", workflow=workflow, le="2.5") == 0
    assert value(samples, "wft_workflow_execution_duration_seconds_bucket", workflow=workflow, le="5.0") == 1


def test_record_execution_refuses_an_unknown_status_and_never_raises_on_redis_errors() -> None:
    with pytest.raises(ValueError, match="unknown execution status 'running'"):
        metrics.record_execution("e1", "wf", "running", 1.0)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    assert metrics.record_execution("e1", "wf", "completed", 1.0, [("input", 0.1)], client=dead) is False
    dead.close()


def test_reserved_messages_are_reported_fleet_wide(
    mq: MessageQueue, start_worker: StartWorker, metrics_url: str
) -> None:
    # Delayed messages are taken by a worker at once and held until due: in no list, but in kombu's
    # unacked hash, which wft_broker_unacked reports.
    start_worker(["indexing_tasks"])
    tag = uuid.uuid4().hex[:8]
    for _ in range(3):
        mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag}, delay_seconds=60)
    wait_until(
        lambda: value(scrape(metrics_url), "wft_broker_unacked") == 3, timeout=30, what="3 held messages"
    )
    assert value(scrape(metrics_url), "wft_queue_depth", queue="indexing_tasks") == 0
