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
from fabric.redis_clients import LuaScript
from fabric.result_backend import STORE_STATE_FUNCTION
from fabric.starts import DeliveryCount

#: Count one delivery (HINCRBY and EXPIRE of the message's counts, raised to ARGV[5] when lower) and, when
#: ARGV[3] is not empty, store it as the task's STARTED state as the result backend stores every state
#: (unless a SUCCESS is stored already). Returns the delivery count of the attempt.
COUNT_AND_START_LUA = (
    STORE_STATE_FUNCTION
    + """
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local minimum = tonumber(ARGV[5]) or 1
if count < minimum then
  redis.call('HSET', KEYS[1], ARGV[1], minimum)
  count = minimum
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then store_state(KEYS[2], ARGV[3], ARGV[4]) end
return count
"""
)
_count_and_start = LuaScript(COUNT_AND_START_LUA)


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
    count = _count_and_start(
        client,
        keys=[deliveries_key(message_id), result_key or deliveries_key(message_id)],
        args=[str(attempt), ttl_seconds, started_meta, result_ttl, minimum],
    )
    return int(cast("int", count))


def attempts(client: redis.Redis, message_id: str) -> int:
    """Every delivery of every attempt of the message so far (0 if it never reached a worker)."""
    values = cast("list[bytes]", client.hvals(deliveries_key(message_id)))
    return sum(int(v) for v in values)
