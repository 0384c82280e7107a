"""Maintenance, run by Celery beat (``beat_schedule`` in :mod:`celeryconfig`) on ``analytics_tasks``:

- ``analytics_tasks.expire_executions``: finished execution records older than ``ARTIFACT_RETENTION_DAYS``
  are deleted from the object store with their artifacts, then from the search index;
- ``analytics_tasks.reconcile_indexes``: the search and vector indexes are brought back in line with the
  object store, the system of record: workflows (and their executions) indexed but no longer stored are
  deleted from the indexes; stored workflows missing from the indexes are sent to be indexed again.

Both are idempotent: a redelivered or overlapping run finds less to do and does no harm.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.utils.log import get_task_logger

from config import get_settings
from fabric.producer import get_message_queue
from services.search import get_search_service
from services.search.base import MAX_LIMIT
from services.vectors import get_vector_service
from tasks.app import app
from tasks.base import BaseTask
from workflows.documents import (
    VECTOR_COLLECTION,
    embed_workflow_message,
    index_workflow_message,
    workflow_document,
)
from workflows.repository import WorkflowRepository

logger = get_task_logger(__name__)

EXPIRE_TASK = "analytics_tasks.expire_executions"
RECONCILE_TASK = "analytics_tasks.reconcile_indexes"


def expiry_cutoff(now: datetime | None = None) -> datetime:
    """The moment before which finished executions are expired (``ARTIFACT_RETENTION_DAYS`` ago)."""
    moment = now or datetime.now(UTC)
    return moment - timedelta(days=get_settings().artifact_retention_days)


@app.task(name=EXPIRE_TASK, bind=True)
def expire_executions(self: BaseTask, now: str | None = None) -> dict[str, Any]:
    """Delete finished executions that completed before the retention cutoff (``now`` ISO-8601, default
    the current time), store first, then index. Returns ``{"cutoff", "expired", "index_deleted"}``.

    Unfinished executions are never expired (a running one still writes its record). At most
    ``MAINTENANCE_MAX_EXPIRED_PER_RUN`` go per run; the next run takes the rest.
    """
    cutoff = expiry_cutoff(datetime.fromisoformat(now) if now else None)
    limit = get_settings().maintenance_max_expired_per_run
    repository = WorkflowRepository()
    search = get_search_service()
    expired = index_deleted = 0
    for record in repository.list_executions():
        if expired >= limit:
            break
        if not record.status.finished:
            continue
        finished_at = record.completed_at or record.started_at
        if finished_at is None or _aware(finished_at) >= cutoff:
            continue
        # The store is the system of record: once its record is gone, a crash here leaves only an index
        # entry, which the next run of reconcile_indexes (or of this task) no longer finds in the store.
        repository.delete_execution(record.execution_id)
        expired += 1
        index_deleted += int(search.delete_execution(record.execution_id))
    logger.info("expired %d executions finished before %s", expired, cutoff.isoformat())
    return {"cutoff": cutoff.isoformat(), "expired": expired, "index_deleted": index_deleted}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@app.task(name=RECONCILE_TASK, bind=True)
def reconcile_indexes(self: BaseTask) -> dict[str, Any]:
    """Make the search and vector indexes agree with the object store.

    Returns counts: ``stored`` workflows, ``deleted_workflows`` (search entries without a stored workflow),
    ``deleted_vectors``, ``deleted_executions`` (their executions' search entries), ``resent_index`` and
    ``resent_vectors`` (stored workflows sent to ``index_workflow`` / ``embed_workflow`` again).
    """
    repository = WorkflowRepository()
    search = get_search_service()
    vectors = get_vector_service()
    stored = {w.id: w for w in repository.list_workflows()}
    indexed = {doc["id"] for doc in search.search_workflows("", limit=MAX_LIMIT)}
    if len(indexed) >= MAX_LIMIT:
        logger.warning("reconcile saw only the first %d indexed workflows", MAX_LIMIT)

    counts = {"stored": len(stored), "deleted_workflows": 0, "deleted_vectors": 0, "deleted_executions": 0}
    for workflow_id in sorted(indexed - set(stored)):
        counts["deleted_workflows"] += int(search.delete_workflow(workflow_id))
        counts["deleted_vectors"] += int(vectors.delete_vector(VECTOR_COLLECTION, workflow_id))
        while True:
            executions = search.search_executions(workflow_id=workflow_id, limit=1000)
            deleted = sum(int(search.delete_execution(doc["id"])) for doc in executions)
            counts["deleted_executions"] += deleted
            if not deleted:
                break

    missing_index = [w for w_id, w in stored.items() if w_id not in indexed]
    # The vector store cannot list its ids: a count that differs from the store's means some are missing
    # (or stray), and re-sending every workflow is safe because each write is an upsert by id.
    vector_count = vectors.count(VECTOR_COLLECTION)
    missing_vectors = list(stored.values()) if vector_count != len(stored) else []
    messages: list[tuple[str, dict[str, Any]]] = []
    messages += [index_workflow_message(workflow_document(w)) for w in missing_index]
    messages += [embed_workflow_message(workflow_document(w)) for w in missing_vectors]
    queue = get_message_queue()
    for start in range(0, len(messages), 500):
        queue.enqueue_group(messages[start : start + 500])
    result = {**counts, "resent_index": len(missing_index), "resent_vectors": len(missing_vectors),
              "vectors_before": vector_count}  # fmt: skip
    logger.info("reconciled indexes with the store: %s", result)
    return result
