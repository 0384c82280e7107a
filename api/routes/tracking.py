"""What the API remembers about the messages it sent, so that "queued" can be told from "unknown".

Celery reports PENDING both for a message still waiting in its queue and for an id nobody ever sent. The API
marks each message it sends in Redis (for as long as task results are kept); a PENDING message with the mark
is queued, one without it is unknown (404).
"""

from __future__ import annotations

import redis

from config import get_settings
from fabric import keys
from fabric.errors import BackendUnavailable
from fabric.redis_clients import get_redis

PREFIX = keys.API_SENT


def mark_sent(message_id: str) -> str:
    """Remember that the API sends ``message_id`` (call it before sending). Returns the id; raises
    BackendUnavailable when Redis does not answer."""
    try:
        get_redis().set(PREFIX + message_id, 1, ex=get_settings().result_expires)
    except redis.RedisError as exc:
        raise BackendUnavailable(f"could not record message {message_id}: {exc}") from exc
    return message_id


def was_sent(message_id: str) -> bool:
    """Whether the API sent ``message_id`` (within the result retention)."""
    try:
        return bool(get_redis().exists(PREFIX + message_id))
    except redis.RedisError as exc:
        raise BackendUnavailable(f"could not look up message {message_id}: {exc}") from exc
