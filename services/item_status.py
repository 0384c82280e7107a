"""Statuses of logical messages that travelled inside a bulk envelope (``enqueue_many``).

The envelope is one Celery task; each message in it gets its own record here when the bulk consumer has
written it (or dead-lettered it), kept as long as Celery keeps results. Before that, a message is PENDING,
as Celery reports any message it has no result for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

import redis


def item_key(message_id: str) -> str:
    return f"wft:item:{message_id}"


def record_items(
    client: redis.Redis, records: Iterable[tuple[str, dict[str, Any]]], ttl_seconds: int
) -> None:
    """Store ``(message_id, status)`` pairs in one round trip."""
    pipe = client.pipeline(transaction=False)
    for message_id, status in records:
        pipe.set(item_key(message_id), json.dumps(status), ex=ttl_seconds)
    pipe.execute()


def item_status(client: redis.Redis, message_id: str) -> dict[str, Any] | None:
    raw = cast("bytes | None", client.get(item_key(message_id)))
    return None if raw is None else cast("dict[str, Any]", json.loads(raw))


def item_states(client: redis.Redis, message_ids: list[str]) -> list[str]:
    """The state of each message (``PENDING`` when none is recorded yet), in one round trip per 10,000."""
    states: list[str] = []
    for start in range(0, len(message_ids), 10_000):
        chunk = message_ids[start : start + 10_000]
        for raw in cast("list[bytes | None]", client.mget([item_key(m) for m in chunk])):
            states.append("PENDING" if raw is None else str(json.loads(raw)["state"]))
    return states
