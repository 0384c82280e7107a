"""Delivery counting. Celery on Redis has no delivery limit: a message that kills its worker is redelivered
forever. Workers count each delivery of each attempt here, before running the task, so a poison message can
be recognised and dead-lettered; producers read the counts as a message's ``attempts``."""

from __future__ import annotations

from typing import cast

import redis

from fabric import keys
from fabric.redis_clients import LuaScript
from fabric.result_backend import STORE_STATE_FUNCTION

#: Count one delivery (HINCRBY and EXPIRE of the message's counts) and, when ARGV[3] is not empty, store
#: it as the task's STARTED state as the result backend stores every state (unless a SUCCESS is stored
#: already). Returns the delivery count of the attempt.
COUNT_AND_START_LUA = (
    STORE_STATE_FUNCTION
    + """
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then store_state(KEYS[2], ARGV[3], ARGV[4]) end
return count
"""
)
_count_and_start = LuaScript(COUNT_AND_START_LUA)


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


def count_delivery_and_start(
    client: redis.Redis, message_id: str, attempt: int, ttl_seconds: int,
    result_key: str, started_meta: str, result_ttl: int,
) -> int:  # fmt: skip
    """:func:`count_delivery` and the task's STARTED state (``started_meta`` at ``result_key``, kept
    ``result_ttl`` seconds) in one round trip: what the worker does before every task body runs."""
    count = _count_and_start(
        client,
        keys=[deliveries_key(message_id), result_key],
        args=[str(attempt), ttl_seconds, started_meta, result_ttl],
    )
    return int(cast("int", count))


def attempts(client: redis.Redis, message_id: str) -> int:
    """Every delivery of every attempt of the message so far (0 if it never reached a worker)."""
    values = cast("list[bytes]", client.hvals(deliveries_key(message_id)))
    return sum(int(v) for v in values)
