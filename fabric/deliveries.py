"""Delivery counting. Celery on Redis has no delivery limit: a message that kills its worker is redelivered
forever. Workers count each delivery of each attempt here, before running the task, so a poison message can
be recognised and dead-lettered; producers read the counts as a message's ``attempts``."""

from __future__ import annotations

from typing import cast

import redis

from fabric import keys


def deliveries_key(message_id: str) -> str:
    return keys.deliveries(message_id)


def count_delivery(client: redis.Redis, message_id: str, attempt: int, ttl_seconds: int) -> int:
    """Record one more delivery of attempt number ``attempt`` (Celery's ``retries``) and return how many
    times that attempt has now been delivered. One round trip."""
    key = deliveries_key(message_id)
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(key, str(attempt), 1)
    pipe.expire(key, ttl_seconds)
    count, _ = pipe.execute()
    return int(count)


def attempts(client: redis.Redis, message_id: str) -> int:
    """Every delivery of every attempt of the message so far (0 if it never reached a worker)."""
    values = cast("list[bytes]", client.hvals(deliveries_key(message_id)))
    return sum(int(v) for v in values)
