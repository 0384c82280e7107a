"""Delivery counting. Celery on Redis has no delivery limit: a message that kills its worker is redelivered
forever. Workers count each delivery of each attempt here, so a poison message can be recognised and
dead-lettered; producers read the counts as a message's ``attempts``.

A redelivery is counted before its body runs. A first delivery is counted with its final state, or with its
STARTED state if it runs longer than :data:`fabric.starts.START_GRACE` (:mod:`fabric.starts`): one that
died before either was never counted, so a redelivery counts as at least the second (``minimum``)."""

from __future__ import annotations

from typing import cast

import redis

from fabric import keys
from fabric.result_backend import count_and_store
from fabric.starts import DeliveryCount


def deliveries_key(message_id: str) -> str:
    return keys.deliveries(message_id)


def delivery_count(message_id: str, attempt: int, ttl_seconds: int) -> DeliveryCount:
    """What counting one delivery of attempt ``attempt`` (Celery's ``retries``) of the message writes."""
    return DeliveryCount(deliveries_key(message_id), attempt, ttl_seconds)


def count_delivery(
    client: redis.Redis, message_id: str, attempt: int, ttl_seconds: int, minimum: int = 1
) -> int:
    """Record one more delivery of attempt number ``attempt`` (Celery's ``retries``) and return how many
    times that attempt has now been delivered (at least ``minimum``). One round trip."""
    return count_delivery_and_start(
        client, message_id, attempt, ttl_seconds, result_key="", started_meta="", result_ttl=0,
        minimum=minimum,
    )  # fmt: skip


def count_delivery_and_start(
    client: redis.Redis, message_id: str, attempt: int, ttl_seconds: int,
    result_key: str, started_meta: str, result_ttl: int, minimum: int = 1,
) -> int:  # fmt: skip
    """:func:`count_delivery` and the task's STARTED state (``started_meta`` at ``result_key``, kept
    ``result_ttl`` seconds; none when ``started_meta`` is empty) in one round trip."""
    state = (result_key, started_meta, result_ttl) if started_meta else None
    count = delivery_count(message_id, attempt, ttl_seconds)
    delivered, _stored = count_and_store(client, state=state, count=count, minimum=minimum)
    return delivered


def attempts(client: redis.Redis, message_id: str) -> int:
    """Every delivery of every attempt of the message so far (0 if it never reached a worker)."""
    values = cast("list[bytes]", client.hvals(deliveries_key(message_id)))
    return sum(int(v) for v in values)
