"""Bulk consumers: one broker message (an envelope from ``enqueue_many``) carries many logical messages, and
each action's documents are written with one bulk call (search bulk API, vector batch import, batched
embeddings, analytics counters in one pipeline).

At least once, per logical message: the envelope is acknowledged only after every item is written or
dead-lettered, so a crash in the middle redelivers the whole envelope; every write is an upsert by id (and
statistics count an execution id once), so the redelivery loses nothing and double-counts nothing. A bulk
write refused as a whole for bad input is retried item by item, so one bad document is dead-lettered alone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from celery.utils.log import get_task_logger

from config import get_settings
from config.queues import Queue
from services import deliveries
from services.analytics import WorkflowStats
from services.errors import PermanentError
from services.item_status import record_items
from services.messages import (
    EmbedWorkflow,
    IndexExecution,
    IndexLog,
    IndexWorkflow,
    Payload,
    UpdateWorkflowStats,
)
from services.redis_client import get_redis
from services.search import get_search_service
from services.vectors import get_vector_service
from tasks.app import app
from tasks.base import DEAD_LETTER_TASK, BaseTask
from tasks.vectors import COLLECTION, workflow_vector_item

logger = get_task_logger(__name__)

Writer = Callable[[list[Any]], None]

_EXECUTION_FIELDS = (
    "id", "workflow_id", "status", "started_at", "completed_at", "error_message", "input_data", "output_data",
)  # fmt: skip


def _dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_none=True))


def _index_workflows(messages: list[IndexWorkflow]) -> None:
    get_search_service().bulk_index_workflows([_dump(m.workflow) for m in messages])


def _index_executions(messages: list[IndexExecution]) -> None:
    docs = [{k: v for k, v in _dump(m.execution).items() if k in _EXECUTION_FIELDS} for m in messages]
    get_search_service().bulk_index_executions(docs)


def _index_logs(messages: list[IndexLog]) -> None:
    get_search_service().bulk_index_logs([_dump(m.entry) for m in messages])


def _embed_workflows(messages: list[EmbedWorkflow]) -> None:
    items = []
    for message in messages:
        item = workflow_vector_item(message.workflow)
        item["metadata"] = {k: v for k, v in item["metadata"].items() if v is not None}
        items.append(item)
    get_vector_service().store_vectors(COLLECTION, items)


def _update_stats(messages: list[UpdateWorkflowStats]) -> None:
    WorkflowStats().record_many((m.workflow_id, _dump(m.execution)) for m in messages)


#: action -> (payload model, bulk writer)
HANDLERS: dict[str, tuple[type[Payload], Writer]] = {
    "index_workflow": (IndexWorkflow, _index_workflows),
    "index_execution": (IndexExecution, _index_executions),
    "index_log": (IndexLog, _index_logs),
    "embed_workflow": (EmbedWorkflow, _embed_workflows),
    "update_workflow_stats": (UpdateWorkflowStats, _update_stats),
}


def process_envelope(task: BaseTask, queue: str, items: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Write every item of an envelope in bulk, dead-letter the ones that cannot be written, record each
    item's status. Transient errors propagate, so Celery retries the whole envelope."""
    by_action: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_action[item["action"]].append(item)
    done: list[str] = []
    failed: list[tuple[dict[str, Any], BaseException]] = []
    for action, group in by_action.items():
        if action not in HANDLERS:
            failed += [(item, PermanentError(f"no bulk handler for action {action!r}")) for item in group]
            continue
        model, write = HANDLERS[action]
        parsed = []
        for item in group:
            try:
                parsed.append((item, model.model_validate(item["payload"])))
            except ValueError as exc:
                failed.append((item, exc))
        try:
            write([message for _, message in parsed])
            done += [item["id"] for item, _ in parsed]
        except PermanentError:
            # Find the documents that spoil the batch; write the others.
            for item, message in parsed:
                try:
                    write([message])
                    done.append(item["id"])
                except PermanentError as exc:
                    failed.append((item, exc))
    now = time.time()
    settings = get_settings()
    envelope = task.request.id
    attempts = deliveries.attempts(get_redis(), envelope)  # deliveries of the envelope that carried them
    statuses = [
        (message_id, {"id": message_id, "state": "SUCCESS", "queue": queue, "envelope": envelope,
                      "date_done": now, "attempts": attempts})
        for message_id in done
    ]  # fmt: skip
    for item, problem in failed:
        error = {"type": type(problem).__name__, "message": str(problem)}
        status = {"id": item["id"], "state": "DEAD_LETTERED", "queue": queue, "envelope": envelope,
                  "error": error, "date_done": now, "attempts": attempts}  # fmt: skip
        statuses.append((item["id"], status))
        record = {
            "id": item["id"], "task": f"{queue}.{item['action']}", "queue": queue,
            "kwargs": {"payload": item["payload"]}, "priority": 0, "reason": "permanent", "error": error,
            "attempts": attempts, "retries": task.request.retries, "worker": task.request.hostname,
            "envelope": envelope, "failed_at": now, "dead_lettered_at": now,
        }  # fmt: skip
        logger.error("dead-lettering %s from envelope %s: %s", item["id"], envelope, problem)
        task.app.send_task(DEAD_LETTER_TASK, kwargs={"record": record}, queue=Queue.DEAD_LETTER.value,
                           routing_key=Queue.DEAD_LETTER.value)  # fmt: skip
    record_items(get_redis(), statuses, settings.result_expires)
    return {"written": len(done), "dead_lettered": len(failed)}


def _bulk_task(queue: Queue) -> Any:
    @app.task(name=f"{queue.value}.bulk", bind=True)
    def bulk(self: BaseTask, items: list[dict[str, Any]]) -> dict[str, int]:
        return process_envelope(self, queue.value, items)

    return bulk


index_bulk = _bulk_task(Queue.INDEXING)
vector_bulk = _bulk_task(Queue.VECTORS)
analytics_bulk = _bulk_task(Queue.ANALYTICS)
