"""Bulk consumers: one broker message (an envelope from ``enqueue_many``) carries many logical messages, and
each action's documents are written with one bulk call (search bulk API, vector batch import, batched
embeddings, analytics counters in one pipeline).

At least once, per logical message: the envelope is acknowledged only after every item is written or
dead-lettered, so a crash in the middle redelivers the whole envelope; every write is an upsert by id (and
statistics count an execution id once), so the redelivery loses nothing and double-counts nothing. Each
action is written by its writer in :mod:`tasks.writers`, with the fallback the per-message tasks use too: a
bulk write refused as a whole for bad input is retried item by item, so one bad document is dead-lettered
alone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from celery.utils.log import get_task_logger

from config import get_settings
from config.queues import Queue
from fabric.dead_letters import DeadLetter, publish
from fabric.envelopes import unpack_items
from fabric.errors import InvalidInput, PermanentError
from fabric.redis_clients import get_redis
from fabric.statuses import item_id, record_envelope
from tasks.app import app
from tasks.base import BaseTask, delivery_attempts
from tasks.writers import WRITERS, write_groups

logger = get_task_logger(__name__)


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
        writer = WRITERS.get(action)
        if writer is None:
            failed.update((p, PermanentError(f"no bulk writer for action {action!r}")) for p in positions)
            continue
        parsed: list[tuple[int, list[Any]]] = []
        for position in positions:
            try:
                parsed.append((position, writer.documents(items[position]["payload"])))
            except (PermanentError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                failed[position] = exc
        refused = write_groups(writer, [docs for _, docs in parsed])
        failed.update((parsed[index][0], error) for index, error in refused.items())
    now = time.time()
    attempts = delivery_attempts(envelope)  # deliveries of the envelope that carried them
    errors = {p: {"type": type(problem).__name__, "message": str(problem)} for p, problem in failed.items()}
    for position, problem in failed.items():
        item = items[position]
        letter = DeadLetter.of(
            problem, "permanent", id=ids[position], task=f"{queue}.{item['action']}", queue=queue,
            kwargs={"payload": item["payload"]}, attempts=attempts, retries=task.request.retries,
            worker=task.request.hostname, envelope=envelope,
        )  # fmt: skip
        logger.error("dead-lettering %s from envelope %s: %s", ids[position], envelope, problem)
        publish(task.app, letter)
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
