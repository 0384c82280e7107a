"""Statuses of logical messages that travelled inside a bulk envelope (``enqueue_many``).

The envelope is one Celery task. ``enqueue_many`` names the message at position ``i`` of envelope ``E``
``E.i`` (:func:`item_id`), so the bulk consumer records the whole envelope's outcome as **one** Redis value
(which positions were written, which were dead-lettered and why) instead of one value per message: at
100,000 documents a second, a SET per message was half of the consumer's time. A message whose id does not
follow that scheme (an envelope built by some other producer) gets a record of its own. Records are kept as
long as Celery keeps results. Before the consumer has written a message, it is PENDING, as Celery reports
any message it has no result for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis

from fabric import keys

_SEP = "."  # never part of a UUID, so ``E.i`` cannot be mistaken for a plain task id


def item_id(envelope_id: str, position: int) -> str:
    """The id of the logical message at ``position`` of envelope ``envelope_id``."""
    return f"{envelope_id}{_SEP}{position}"


def split_item_id(message_id: str) -> tuple[str, int] | None:
    """``(envelope_id, position)`` for an id made by :func:`item_id`, else None."""
    envelope, sep, position = message_id.rpartition(_SEP)
    if not sep or not envelope or not (position.isascii() and position.isdigit()):  # not "²", "٣"
        return None
    return envelope, int(position)


envelope_key = keys.envelope
item_key = keys.item


def record_envelope(
    client: redis.Redis,
    envelope_id: str,
    item_ids: Sequence[str],
    outcome: Mapping[str, Any],
    failures: Mapping[int, Mapping[str, Any]],
    ttl_seconds: int,
) -> None:
    """Record the outcome of every item of an envelope, in one round trip.

    ``outcome`` holds what all items share (``queue``, ``date_done``, ``attempts``); ``failures`` maps the
    position of each dead-lettered item to its ``error``. Items with ids of the ``E.i`` form are covered by
    the one envelope record; any other id gets its own record.
    """
    pipe = client.pipeline(transaction=False)
    record = {**outcome, "count": len(item_ids), "failed": {str(p): dict(e) for p, e in failures.items()}}
    pipe.set(envelope_key(envelope_id), json.dumps(record), ex=ttl_seconds)
    for position, message_id in enumerate(item_ids):
        if message_id != item_id(envelope_id, position):
            status = _status(message_id, envelope_id, position, record)
            pipe.set(item_key(message_id), json.dumps(status), ex=ttl_seconds)
    pipe.execute()


def _status(message_id: str, envelope_id: str, position: int, record: Mapping[str, Any]) -> dict[str, Any]:
    failure = record["failed"].get(str(position))
    status = {
        "id": message_id,
        "state": "SUCCESS" if failure is None else "DEAD_LETTERED",
        "queue": record.get("queue"),
        "envelope": envelope_id,
        "date_done": record.get("date_done"),
        "attempts": record.get("attempts"),
    }
    if failure is not None:
        status["error"] = failure
    return status


def item_status(client: redis.Redis, message_id: str) -> dict[str, Any] | None:
    """The recorded status of one logical message, or None if there is none (yet)."""
    return _lookup(client, [message_id])[0]


def item_states(client: redis.Redis, message_ids: list[str]) -> list[str]:
    """The state of each message (``PENDING`` when none is recorded yet), in one round trip per 10,000
    envelopes or messages."""
    return ["PENDING" if s is None else str(s["state"]) for s in _lookup(client, message_ids)]


def _lookup(client: redis.Redis, message_ids: list[str]) -> list[dict[str, Any] | None]:
    parsed = [split_item_id(message_id) for message_id in message_ids]
    envelopes: dict[str, dict[str, Any] | None] = {p[0]: None for p in parsed if p is not None}
    found: dict[str, dict[str, Any] | None] = {
        m: None for m, p in zip(message_ids, parsed, strict=True) if p is None
    }
    _fetch(client, envelopes, envelope_key)
    _fetch(client, found, item_key)
    statuses: list[dict[str, Any] | None] = []
    strays: dict[str, dict[str, Any] | None] = {}
    for message_id, in_envelope in zip(message_ids, parsed, strict=True):
        if in_envelope is None:
            statuses.append(found[message_id])
            continue
        envelope_id, position = in_envelope
        record = envelopes[envelope_id]
        if record is None or position >= int(record["count"]):
            statuses.append(None)
            strays[message_id] = None  # an id that only looks like E.i may have a record of its own
        else:
            statuses.append(_status(message_id, envelope_id, position, record))
    if strays:
        _fetch(client, strays, item_key)
        statuses = [strays.get(m) if s is None else s for m, s in zip(message_ids, statuses, strict=True)]
    return statuses


def _fetch(client: redis.Redis, wanted: dict[str, dict[str, Any] | None], key: Any) -> None:
    names = list(wanted)
    for start in range(0, len(names), 10_000):
        chunk = names[start : start + 10_000]
        for name, raw in zip(
            chunk, cast("list[bytes | None]", client.mget([key(n) for n in chunk])), strict=True
        ):
            wanted[name] = None if raw is None else cast("dict[str, Any]", json.loads(raw))
