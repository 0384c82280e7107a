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
from fabric import deliveries
from fabric.contracts import (
    EmbedWorkflow,
    IndexExecution,
    IndexWorkflow,
    LogEntryDoc,
    Payload,
    UpdateWorkflowStats,
)
from fabric.envelopes import unpack_items
from fabric.errors import InvalidInput, PermanentError
from fabric.redis_clients import get_redis
from fabric.statuses import item_id, record_envelope
from services.analytics import WorkflowStats
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


_LOG_SERVICE_DEFAULT = LogEntryDoc.model_fields["service"].default


def _index_logs(payloads: list[dict[str, Any]]) -> None:
    # Logs are the bulk of the traffic, so they are checked once, by the search service's own validation
    # (which names the bad field), instead of by the payload model too. The producer has already applied
    # the model's defaults; an envelope from elsewhere gets the one that changes what a search finds.
    entries = []
    for payload in payloads:
        entry = payload.get("entry") if isinstance(payload, dict) else None
        if not isinstance(entry, dict):
            raise InvalidInput(f"payload.entry must be a JSON object, got {type(entry).__name__}")
        entries.append(entry if "service" in entry else {**entry, "service": _LOG_SERVICE_DEFAULT})
    get_search_service().bulk_index_logs(entries)


def _embed_workflows(messages: list[EmbedWorkflow]) -> None:
    items = []
    for message in messages:
        item = workflow_vector_item(message.workflow)
        item["metadata"] = {k: v for k, v in item["metadata"].items() if v is not None}
        items.append(item)
    get_vector_service().store_vectors(COLLECTION, items)


def _update_stats(messages: list[UpdateWorkflowStats]) -> None:
    WorkflowStats().record_many((m.workflow_id, _dump(m.execution)) for m in messages)


#: action -> (payload model, bulk writer). The writer of an action without a model takes the payloads as
#: they came and validates them itself, raising PermanentError for a bad one.
HANDLERS: dict[str, tuple[type[Payload] | None, Writer]] = {
    "index_workflow": (IndexWorkflow, _index_workflows),
    "index_execution": (IndexExecution, _index_executions),
    "index_log": (None, _index_logs),
    "embed_workflow": (EmbedWorkflow, _embed_workflows),
    "update_workflow_stats": (UpdateWorkflowStats, _update_stats),
}


def process_envelope(task: BaseTask, queue: str, items: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Write every item of an envelope in bulk, dead-letter the ones that cannot be written, record the
    outcome of every item. Transient errors propagate, so Celery retries the whole envelope."""
    envelope = task.request.id
    ids = [str(item.get("id") or item_id(envelope, position)) for position, item in enumerate(items)]
    by_action: dict[str, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        by_action[item["action"]].append(position)
    failed: dict[int, BaseException] = {}
    for action, positions in by_action.items():
        if action not in HANDLERS:
            failed.update((p, PermanentError(f"no bulk handler for action {action!r}")) for p in positions)
            continue
        model, write = HANDLERS[action]
        parsed: list[tuple[int, Any]] = []
        for position in positions:
            payload = items[position]["payload"]
            if model is None:
                parsed.append((position, payload))
                continue
            try:
                parsed.append((position, model.model_validate(payload)))
            except ValueError as exc:
                failed[position] = exc
        try:
            write([message for _, message in parsed])
        except PermanentError:
            # Find the documents that spoil the batch; write the others.
            for position, message in parsed:
                try:
                    write([message])
                except PermanentError as exc:
                    failed[position] = exc
    now = time.time()
    attempts = deliveries.attempts(get_redis(), envelope)  # deliveries of the envelope that carried them
    errors = {p: {"type": type(problem).__name__, "message": str(problem)} for p, problem in failed.items()}
    for position, problem in failed.items():
        item = items[position]
        record = {
            "id": ids[position], "task": f"{queue}.{item['action']}", "queue": queue,
            "kwargs": {"payload": item["payload"]}, "priority": 0, "reason": "permanent",
            "error": errors[position], "attempts": attempts, "retries": task.request.retries,
            "worker": task.request.hostname, "envelope": envelope, "failed_at": now, "dead_lettered_at": now,
        }  # fmt: skip
        logger.error("dead-lettering %s from envelope %s: %s", ids[position], envelope, problem)
        task.app.send_task(DEAD_LETTER_TASK, kwargs={"record": record}, queue=Queue.DEAD_LETTER.value,
                           routing_key=Queue.DEAD_LETTER.value)  # fmt: skip
    outcome = {"queue": queue, "date_done": now, "attempts": attempts}
    record_envelope(get_redis(), envelope, ids, outcome, errors, get_settings().result_expires)
    return {"written": len(items) - len(failed), "dead_lettered": len(failed)}


def decode_items(items: object = None, packed_items: object = None) -> list[dict[str, Any]]:
    """The envelope's logical messages: ``items`` as a list, or ``packed_items`` as ``enqueue_many`` packs
    them (:mod:`fabric.envelopes`). Raises :class:`InvalidInput` (the envelope is dead-lettered whole) if
    they are neither."""
    if packed_items is not None:
        items = unpack_items(packed_items)
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("action"), str) and "payload" in i for i in items
    ):
        raise InvalidInput(
            "envelope items must be a list of {'action', 'payload'} objects (and an optional 'id')"
        )
    return items


def _bulk_task(queue: Queue) -> Any:
    # The items are left out of the envelope's own result: each has a status of its own.
    @app.task(name=f"{queue.value}.bulk", bind=True, result_keeps_arguments=False)
    def bulk(
        self: BaseTask, items: list[dict[str, Any]] | None = None, packed_items: str | None = None
    ) -> dict[str, int]:
        return process_envelope(self, queue.value, decode_items(items, packed_items))

    return bulk


index_bulk = _bulk_task(Queue.INDEXING)
vector_bulk = _bulk_task(Queue.VECTORS)
analytics_bulk = _bulk_task(Queue.ANALYTICS)
