"""The system's purpose, end to end with real workers on their queues: workflows registered, executed,
recorded, indexed, embedded and counted."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.errors import InvalidInput
from fabric.producer import MessageQueue
from fabric.redis_clients import get_redis
from services.analytics import get_workflow_stats
from services.search import get_search_service, reset_search_service
from services.vectors import reset_vector_service
from tests.support.fleet import StartWorker, run_fleet
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from workflows.guide import WorkflowSearchService
from workflows.model import ExecutionStatus
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository
from workflows.samples import load_samples, sample_inputs


@pytest.fixture
def pipelines(mq: MessageQueue) -> Pipelines:
    reset_search_service()
    reset_vector_service()
    return Pipelines(queue=mq)


def test_registered_workflows_are_found_by_text_and_by_similarity(
    own_data_dir: Path, pipelines: Pipelines, fleet: list[WorkerProcess]
) -> None:
    samples = load_samples()
    assert len(samples) >= 5
    for workflow in samples:
        pipelines.register_workflow(workflow)
    search = get_search_service()
    for workflow in samples:
        wait_until(
            lambda w=workflow: any(r["id"] == w.id for r in search.search_workflows(w.name, limit=5)),
            timeout=30, what=f"{workflow.id} to be found by text",
        )  # fmt: skip
        wait_until(
            lambda w=workflow: WorkflowSearchService().find_similar_workflows(
                f"{w.name} {w.description}", limit=1, score_threshold=0.5
            )[0]["workflow_id"] == w.id,
            timeout=30, what=f"{workflow.id} to be found by similarity",
        )  # fmt: skip


def test_fifty_executions_are_recorded_indexed_and_counted(
    pipelines: Pipelines, fleet: list[WorkerProcess]
) -> None:
    # Workflows of this test's own (ids unique to the run), so its counts are exact whatever else the
    # session's store holds.
    run = uuid.uuid4().hex[:8]
    originals = load_samples()
    samples = [w.model_copy(update={"id": f"{w.id}-{run}"}) for w in originals]
    for workflow in samples:
        pipelines.register_workflow(workflow)
    started = dt.datetime.now(dt.UTC)
    expected: dict[str, str] = {}
    plan = [(w.id, s) for w, o in zip(samples, originals, strict=True) for s in sample_inputs(o.id)]
    assert {s.expect for _, s in plan} >= {"completed", "failed"}
    while len(expected) < 50:
        workflow_id, sample = plan[len(expected) % len(plan)]
        execution_id = pipelines.request_execution(workflow_id, sample.input)
        expected[execution_id] = sample.expect

    repo = WorkflowRepository()
    search = get_search_service()

    def all_indexed() -> bool:
        return (
            all(search.search_executions(workflow_id=w.id, limit=100) is not None for w in samples)
            and sum(len(search.search_executions(workflow_id=w.id, limit=100)) for w in samples) >= 50
        )

    wait_until(all_indexed, timeout=180, interval=0.5, what="50 executions to be indexed")
    for execution_id, expect in expected.items():
        record = repo.get_execution(execution_id)
        assert record is not None, execution_id
        assert record.status.value == expect, (execution_id, record.error_message)

    ended = dt.datetime.now(dt.UTC)
    by_workflow: dict[str, list[str]] = {}
    for execution_id in expected:
        by_workflow.setdefault(repo.get_execution(execution_id).workflow_id, []).append(execution_id)  # type: ignore[union-attr]
    for workflow_id, ids in by_workflow.items():
        found = search.search_executions(workflow_id=workflow_id, limit=100)
        assert {f["id"] for f in found} == set(ids)
        times = [f["started_at"] for f in found]
        assert times == sorted(times, reverse=True)  # newest first
        failed = {i for i in ids if expected[i] == "failed"}
        assert {
            f["id"] for f in search.search_executions(workflow_id=workflow_id, status="failed", limit=100)
        } == failed
        window = {"from": started.isoformat(), "to": ended.isoformat()}
        assert len(search.search_executions(workflow_id=workflow_id, date_range=window, limit=100)) == len(
            ids
        )
        before = {
            "from": (started - dt.timedelta(days=2)).isoformat(),
            "to": (started - dt.timedelta(days=1)).isoformat(),
        }
        assert search.search_executions(workflow_id=workflow_id, date_range=before, limit=100) == []

        def stats_complete(wid: str = workflow_id, n: int = len(ids)) -> bool:
            return get_workflow_stats(wid)["runs"] == n

        wait_until(stats_complete, timeout=60, what=f"statistics of {workflow_id}")
        stats = get_workflow_stats(workflow_id)
        assert stats["by_status"]["completed"] == len(ids) - len(failed)
        assert stats["by_status"]["failed"] == len(failed)
        assert stats["success_rate"] == pytest.approx((len(ids) - len(failed)) / len(ids))
        assert stats["duration_ms"]["p50"] is not None
        assert stats["duration_ms"]["p95"] >= stats["duration_ms"]["p50"]

    # No process keeps a result subscription per message it sent (150 follow-ups were sent here).
    subscribed = {c["id"]: int(c.get("sub", 0)) for c in get_redis().client_list()}
    assert max(subscribed.values()) <= 5, subscribed

    # logs are found by text
    some_failed = next(i for i, e in expected.items() if e == "failed")
    logs = search.search_logs(execution_id=some_failed, level="ERROR")
    assert logs
    words = logs[0]["message"].split()[:2]
    assert any(
        entry["execution_id"] == some_failed for entry in search.search_logs(query=" ".join(words), limit=100)
    )


def test_killed_worker_mid_execution_leaves_one_record_counted_once(
    pipelines: Pipelines, fleet: list[WorkerProcess], tmp_path
) -> None:
    slow = {
        "id": "slow-flow",
        "name": "Slow flow",
        "description": "Sleeps between steps so a worker can be killed mid-execution",
        "definition": {
            "nodes": [
                {"id": "in", "type": "input", "data": {}},
                {"id": "wait", "type": "process", "data": {"operation": "delay", "params": {"seconds": 2}}},
                {"id": "out", "type": "output", "data": {}},
            ],
            "edges": [{"source": "in", "target": "wait"}, {"source": "wait", "target": "out"}],
        },
    }
    pipelines.register_workflow(slow)
    execution_id = pipelines.request_execution("slow-flow", {"x": 1})
    repo = WorkflowRepository()

    def running() -> bool:
        record = repo.get_execution(execution_id)
        return record is not None and record.status is ExecutionStatus.RUNNING

    wait_until(running, timeout=30, what="the execution to start")
    executor = fleet[0]
    for child in executor.child_pids():
        os.kill(child, signal.SIGKILL)
    wait_until(
        lambda: get_workflow_stats("slow-flow")["runs"] == 1, timeout=60, what="the execution to be counted"
    )
    record = repo.get_execution(execution_id)
    assert record is not None and record.status is ExecutionStatus.COMPLETED
    assert [e.execution_id for e in repo.list_executions("slow-flow")] == [execution_id]
    assert get_workflow_stats("slow-flow")["runs"] == 1


LOST_AFTER = 10
STEP_SECONDS = 5


@pytest.fixture
def fast_recovering_fleet(tmp_path: Path, mq: MessageQueue) -> Iterator[list[WorkerProcess]]:
    """The fleet with default settings but ``WORKER_LOST_AFTER``."""
    yield from run_fleet(tmp_path / "fleet", mq.app, env={"WORKER_LOST_AFTER": str(LOST_AFTER)})


def test_whole_worker_killed_mid_step_another_finishes_the_execution_within_worker_lost_after(
    pipelines: Pipelines, mq: MessageQueue, fast_recovering_fleet: list[WorkerProcess],
    start_worker: StartWorker,
) -> None:  # fmt: skip
    # kill -9 of a whole execution worker (main process and pool: a lost host) in the middle of a step.
    standby = start_worker(["workflow_execution"], name="standby", env={"WORKER_LOST_AFTER": str(LOST_AFTER)})
    workflow_id = f"slow-{uuid.uuid4().hex[:8]}"
    pipelines.register_workflow(
        {
            "id": workflow_id,
            "name": "Slow flow",
            "definition": {
                "nodes": [
                    {"id": "in", "type": "input", "data": {}},
                    {"id": "wait", "type": "process",
                     "data": {"operation": "delay", "params": {"seconds": STEP_SECONDS}}},
                    {"id": "out", "type": "output", "data": {}},
                ],
                "edges": [{"source": "in", "target": "wait"}, {"source": "wait", "target": "out"}],
            },
        }
    )  # fmt: skip
    execution_id = pipelines.request_execution(workflow_id, {"x": 1})
    repo = WorkflowRepository()

    def running() -> bool:
        record = repo.get_execution(execution_id)
        return record is not None and record.status is ExecutionStatus.RUNNING

    wait_until(running, timeout=30, what="the execution to start")
    # STARTED (with the worker's name) is stored once the task has run START_GRACE seconds.
    wait_until(lambda: mq.app.backend.get_task_meta(execution_id).get("worker"), timeout=30,
               what="the STARTED state naming the worker")  # fmt: skip
    holder = mq.app.backend.get_task_meta(execution_id)["worker"]
    executor = fast_recovering_fleet[0]
    doomed, survivor = (executor, standby) if holder == executor.nodename else (standby, executor)
    assert holder == doomed.nodename
    doomed.kill9()
    killed_at = time.monotonic()

    def completed() -> bool:
        record = repo.get_execution(execution_id)
        return record is not None and record.status is ExecutionStatus.COMPLETED

    # Back on its queue within WORKER_LOST_AFTER, then the step runs again; a few seconds to spare.
    wait_until(completed, timeout=LOST_AFTER + STEP_SECONDS + 10, interval=0.2,
               what="another worker to finish the execution")  # fmt: skip
    recovered_in = time.monotonic() - killed_at
    assert mq.app.backend.get_task_meta(execution_id)["worker"] == survivor.nodename
    search = get_search_service()
    wait_until(lambda: get_workflow_stats(workflow_id)["runs"] == 1, timeout=60, what="the count")
    wait_until(lambda: search.search_executions(workflow_id=workflow_id, limit=10), timeout=60,
               what="the execution to be indexed")  # fmt: skip
    wait_until(lambda: search.search_logs(execution_id=execution_id, limit=100), timeout=60,
               what="its logs to be indexed")  # fmt: skip
    assert [e["id"] for e in search.search_executions(workflow_id=workflow_id, limit=10)] == [execution_id]
    assert [e.execution_id for e in repo.list_executions(workflow_id)] == [execution_id]
    stats = get_workflow_stats(workflow_id)
    assert stats["runs"] == 1
    assert stats["by_status"]["completed"] == 1
    print(f"execution finished on {survivor.nodename} {recovered_in:.1f} s after the kill")


def test_cancelled_execution_stops_between_steps(pipelines: Pipelines, fleet: list[WorkerProcess]) -> None:
    slow = {
        "id": "cancel-flow",
        "name": "Cancellable flow",
        "definition": {
            "nodes": [
                {"id": "in", "type": "input", "data": {}},
                {"id": "wait", "type": "process", "data": {"operation": "delay", "params": {"seconds": 2}}},
                {"id": "after", "type": "process", "data": {"operation": "delay", "params": {"seconds": 0}}},
                {"id": "out", "type": "output", "data": {}},
            ],
            "edges": [
                {"source": "in", "target": "wait"},
                {"source": "wait", "target": "after"},
                {"source": "after", "target": "out"},
            ],
        },
    }
    pipelines.register_workflow(slow)
    execution_id = pipelines.request_execution("cancel-flow", {})
    repo = WorkflowRepository()
    wait_until(
        lambda: repo.get_execution(execution_id) is not None, timeout=30, what="the execution to start"
    )
    pipelines.cancel_execution(execution_id)

    def finished() -> bool:
        record = repo.get_execution(execution_id)
        return record is not None and record.status.finished

    wait_until(finished, timeout=30, what="the execution to stop")
    record = repo.get_execution(execution_id)
    assert record is not None and record.status is ExecutionStatus.CANCELLED
    ran = {s.step_id for s in record.steps if s.status.value == "completed"}
    assert "after" not in ran


def test_bad_definitions_are_refused_with_the_node_named_and_nothing_stored(pipelines: Pipelines) -> None:
    bad = {
        "id": "bad-flow",
        "name": "Bad",
        "definition": {
            "nodes": [{"id": "a", "type": "input", "data": {}}, {"id": "b", "type": "teleport", "data": {}}],
            "edges": [{"source": "a", "target": "b"}],
        },
    }
    with pytest.raises(InvalidInput, match="'b'"):
        pipelines.register_workflow(bad)
    assert not WorkflowRepository().workflow_exists("bad-flow")
    private = {
        "id": "ssrf-flow",
        "name": "SSRF",
        "definition": {
            "nodes": [
                {"id": "call", "type": "http", "data": {"url": "http://127.0.0.1:6379/", "method": "GET"}}
            ],
            "edges": [],
        },
    }
    with pytest.raises(InvalidInput, match="call"):
        pipelines.register_workflow(private)
    assert not WorkflowRepository().workflow_exists("ssrf-flow")
