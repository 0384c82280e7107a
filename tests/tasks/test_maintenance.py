"""Maintenance tasks through the broker, on real workers (and once from a real ``celery beat``)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import uuid
from pathlib import Path

from celery.result import AsyncResult

from config import get_settings
from fabric.producer import MessageQueue
from services.search import get_search_service
from services.vectors import get_vector_service
from tasks.maintenance import EXPIRE_TASK, RECONCILE_TASK
from tests.support.fleet import StartWorker
from tests.support.servers import ManagedProcess, wait_until
from tests.support.workers import REPO_ROOT
from workflows.documents import VECTOR_COLLECTION, workflow_document
from workflows.model import ExecutionRecord, ExecutionStatus
from workflows.repository import WorkflowRepository
from workflows.samples import load_samples

NOW = dt.datetime.now(dt.UTC)


def _record(run: str, name: str, age_days: float, status: ExecutionStatus) -> ExecutionRecord:
    started = NOW - dt.timedelta(days=age_days)
    finished = started + dt.timedelta(seconds=2) if status.finished else None
    return ExecutionRecord(execution_id=f"{run}-{name}", workflow_id=f"wf-{run}", status=status,
                           started_at=started, completed_at=finished)  # fmt: skip


def _store_and_index(repo: WorkflowRepository, record: ExecutionRecord) -> None:
    repo.save_execution(record)
    repo.save_artifact(record.execution_id, "report.txt", "output")
    get_search_service().index_execution(
        record.execution_id,
        {"workflow_id": record.workflow_id, "status": record.status.value,
         "started_at": record.started_at.isoformat() if record.started_at else None},
    )  # fmt: skip


def _send(mq: MessageQueue, task: str) -> AsyncResult:
    return mq.app.send_task(task)  # routed to analytics_tasks by its name, as beat sends it


def test_expiry_deletes_old_finished_executions_from_store_and_index(
    mq: MessageQueue, start_worker: StartWorker
) -> None:
    retention = get_settings().artifact_retention_days
    run = uuid.uuid4().hex[:8]
    repo = WorkflowRepository()
    old = _record(run, "old", retention + 5, ExecutionStatus.COMPLETED)
    old_failed = _record(run, "old-failed", retention + 1, ExecutionStatus.FAILED)
    fresh = _record(run, "fresh", retention - 1, ExecutionStatus.COMPLETED)
    stuck = _record(run, "stuck", retention + 5, ExecutionStatus.RUNNING)  # never expired while unfinished
    for record in (old, old_failed, fresh, stuck):
        _store_and_index(repo, record)
    start_worker(["analytics_tasks"])

    result = _send(mq, EXPIRE_TASK).get(timeout=60)
    assert result["expired"] >= 2

    search = get_search_service()
    indexed = {d["id"] for d in search.search_executions(workflow_id=f"wf-{run}")}
    assert indexed == {fresh.execution_id, stuck.execution_id}
    for gone in (old, old_failed):
        assert repo.get_execution(gone.execution_id) is None
        assert repo.list_artifacts(gone.execution_id) == []
    assert {r.execution_id for r in repo.list_executions(f"wf-{run}")} == {
        fresh.execution_id,
        stuck.execution_id,
    }
    assert repo.list_artifacts(fresh.execution_id) == ["report.txt"]
    # Run again (a redelivery, or the next beat): nothing of ours is left to expire.
    _send(mq, EXPIRE_TASK).get(timeout=60)
    assert repo.get_execution(fresh.execution_id) is not None
    # Leave the session's shared store as we found it (other tests count what it holds).
    for record in (fresh, stuck):
        repo.delete_execution(record.execution_id)
        search.delete_execution(record.execution_id)


def test_reconcile_removes_strays_and_resends_what_the_indexes_miss(
    mq: MessageQueue, start_worker: StartWorker
) -> None:
    run = uuid.uuid4().hex[:8]
    repo = WorkflowRepository()
    sample = load_samples()[0]
    kept = sample.model_copy(update={"id": f"kept-{run}", "name": f"Kept {run}"})
    missing = sample.model_copy(update={"id": f"missing-{run}", "name": f"Missing {run}"})
    for workflow in (kept, missing):
        repo.save_workflow(workflow)
    search, vectors = get_search_service(), get_vector_service()
    # In the indexes: the kept workflow, and a ghost whose definition is no longer in the store.
    ghost = {"id": f"ghost-{run}", "name": f"Ghost {run}", "tags": []}
    search.index_workflow(kept.id, workflow_document(kept))
    search.index_workflow(ghost["id"], ghost)
    search.index_execution(f"ghost-run-{run}", {"workflow_id": ghost["id"], "status": "completed"})
    vectors.store_vector(
        VECTOR_COLLECTION, f"Ghost {run}", {"workflow_id": ghost["id"]}, vector_id=ghost["id"]
    )
    start_worker(["analytics_tasks", "indexing_tasks", "vector_tasks"], concurrency=2)

    result = _send(mq, RECONCILE_TASK).get(timeout=60)
    assert result["deleted_workflows"] >= 1 and result["deleted_vectors"] >= 1
    assert result["deleted_executions"] >= 1 and result["resent_index"] >= 1

    assert search.search_workflows(f"Ghost {run}") == []
    assert search.search_executions(workflow_id=ghost["id"]) == []
    found = vectors.search_similar(VECTOR_COLLECTION, f"Ghost {run}", limit=50, score_threshold=0.0)
    assert ghost["id"] not in {hit["id"] for hit in found}
    wait_until(lambda: [d["id"] for d in search.search_workflows(f"Missing {run}")] == [missing.id],
               timeout=60, what="the missing workflow to be indexed again")  # fmt: skip

    def embedded() -> bool:
        hits = vectors.search_similar(VECTOR_COLLECTION, f"Missing {run} {missing.description}", limit=50,
                                      score_threshold=0.0)  # fmt: skip
        return missing.id in {hit["id"] for hit in hits}

    wait_until(embedded, timeout=60, what="the missing workflow to be embedded again")
    assert [d["id"] for d in search.search_workflows(f"Kept {run}")] == [kept.id]
    # Leave the session's shared store and indexes as we found them (other tests count what they hold).
    for workflow in (kept, missing):
        repo.delete_workflow(workflow.id)
        search.delete_workflow(workflow.id)
        vectors.delete_vector(VECTOR_COLLECTION, workflow.id)


def test_beat_sends_the_maintenance_tasks_on_schedule(
    mq: MessageQueue, start_worker: StartWorker, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    repo = WorkflowRepository()
    old = _record(run, "old", get_settings().artifact_retention_days + 3, ExecutionStatus.COMPLETED)
    _store_and_index(repo, old)
    start_worker(["analytics_tasks", "indexing_tasks", "vector_tasks"])
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO_ROOT), "MAINTENANCE_EXPIRE_INTERVAL": "1",
                "MAINTENANCE_RECONCILE_INTERVAL": "1"})  # fmt: skip
    beat = ManagedProcess(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "-s", str(tmp_path / "schedule"),
         "-l", "INFO"],
        tmp_path, "beat", env=env,
    )  # fmt: skip
    beat.start()
    try:
        wait_until(lambda: repo.get_execution(old.execution_id) is None, timeout=60,
                   what=f"beat to have the old execution expired\n{beat.log_tail()}")  # fmt: skip
        search = get_search_service()
        # The store goes first, then the index entry (see tasks.maintenance).
        wait_until(lambda: search.search_executions(workflow_id=f"wf-{run}") == [], timeout=30,
                   what="the expired execution to leave the index")  # fmt: skip
        wait_until(lambda: "analytics_tasks.reconcile_indexes" in beat.log_path.read_text(), timeout=30,
                   what="beat to send the reconciliation")  # fmt: skip
    finally:
        beat.stop()
