"""``dead_letter`` queue: keep each dead letter in the store, where it can be listed and replayed."""

from __future__ import annotations

from typing import Any

import redis

from fabric.dead_letters import DEAD_LETTER_TASK, DeadLetterStore
from fabric.errors import BackendUnavailable
from fabric.redis_clients import get_redis
from tasks.app import app
from tasks.base import BaseTask


class DeadLetterConsumer(BaseTask):
    # A dead letter that cannot be stored stays in the broker and is retried; it never dead-letters itself.
    dead_letter_on_failure = False
    retries_forever = True  # max_retries None, backoff capped at RETRY_BACKOFF_MAX (fabric.celery_config)


@app.task(name=DEAD_LETTER_TASK, base=DeadLetterConsumer, bind=True)
def store(self: BaseTask, record: dict[str, Any]) -> dict[str, Any]:
    """Keep ``record`` (idempotent by its message id). Returns whether it was new."""
    try:
        added = DeadLetterStore(get_redis()).add(record)
    except redis.RedisError as exc:
        raise BackendUnavailable(f"could not store dead letter {record['id']}: {exc}") from exc
    return {"id": record["id"], "queue": record["queue"], "added": added}
