r"""Dead letters: messages that failed permanently, ran out of retries, or kept killing workers.

A failing task builds one :class:`DeadLetter` and :func:`publish`\ es it to the ``dead_letter`` queue
(through the broker, like any message); the ``dead_letter.store`` task consumes it and keeps it in the
:class:`DeadLetterStore`, in Redis, until it is replayed or purged. Records are keyed by the original
message id, so a redelivered dead letter is stored once.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, ConfigDict, Field

from config.queues import Queue
from fabric import keys
from fabric.errors import NotFound

#: The task that keeps dead letters (consumes the ``dead_letter`` queue).
DEAD_LETTER_TASK = "dead_letter.store"

Reason = Literal["permanent", "retries_exhausted", "poison", "error"]


class DeadLetterError(BaseModel):
    type: str
    message: str


class DeadLetter(BaseModel):
    """What a dead letter records: the original message (task, queue, arguments, priority), why and how it
    failed, how often it was delivered, and when. Stored and listed as its JSON (:meth:`record`)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    id: str
    task: str
    queue: str
    # Stored as "kwargs"; a field of that name would shadow pydantic's own keyword arguments.
    original_kwargs: dict[str, Any] = Field(default_factory=dict, alias="kwargs")
    priority: int = 0
    reason: Reason
    error: DeadLetterError
    attempts: int = 0
    retries: int = 0
    worker: str | None = None
    eta: str | None = None
    #: The bulk envelope that carried it, for a message dead-lettered alone out of an envelope.
    envelope: str | None = None
    failed_at: float
    dead_lettered_at: float

    @classmethod
    def of(cls, error: BaseException, reason: Reason, **fields: Any) -> DeadLetter:
        """The dead letter of a message that failed with ``error`` just now."""
        now = time.time()
        described = DeadLetterError(type=type(error).__name__, message=str(error))
        return cls(reason=reason, error=described, failed_at=now, dead_lettered_at=now, **fields)

    def record(self) -> dict[str, Any]:
        """The JSON record that travels and is stored."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def publish(app: Any, letter: DeadLetter) -> None:
    """Send ``letter`` to the ``dead_letter`` queue, where ``dead_letter.store`` keeps it."""
    app.send_task(
        DEAD_LETTER_TASK,
        kwargs={"record": letter.record()},
        queue=Queue.DEAD_LETTER.value,
        routing_key=Queue.DEAD_LETTER.value,
    )


ITEMS = keys.DEAD_LETTER_ITEMS
INDEX = keys.DEAD_LETTER_INDEX
COUNTS = keys.DEAD_LETTER_COUNTS

# Add a record only once, and keep the per-queue count in step with the records.
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  return 1
end
return 0
"""
_REMOVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
return 1
"""

#: A dead letter as stored and listed: the JSON of a :class:`DeadLetter` (or of another producer's record,
#: which needs only ``id``, ``queue`` and ``dead_lettered_at``).
DeadLetterRecord = dict[str, Any]


class DeadLetterStore:
    """Dead letters kept in Redis: a hash of records, a time index and a count per original queue."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)

    def add(self, record: DeadLetterRecord) -> bool:
        """Keep ``record`` (which has ``id``, ``queue`` and ``dead_lettered_at``). False if already kept."""
        added = self._add(
            keys=[ITEMS, INDEX, COUNTS],
            args=[record["id"], json.dumps(record), float(record["dead_lettered_at"]), record["queue"]],
        )
        return bool(added)

    def get(self, message_id: str) -> DeadLetterRecord:
        raw = cast("bytes | None", self.client.hget(ITEMS, message_id))
        if raw is None:
            raise NotFound(f"no dead letter with id {message_id!r}")
        return cast("DeadLetterRecord", json.loads(raw))

    def contains(self, message_id: str) -> bool:
        return bool(self.client.hexists(ITEMS, message_id))

    def list(self, queue: str | None = None, limit: int = 100, offset: int = 0) -> list[DeadLetterRecord]:
        """Newest first, optionally only those from ``queue``."""
        records: list[DeadLetterRecord] = []
        start = 0
        page = max(limit + offset, 100)
        skipped = 0
        while len(records) < limit:
            ids = cast("list[bytes]", self.client.zrevrange(INDEX, start, start + page - 1))
            if not ids:
                break
            start += page
            for raw in cast("list[bytes | None]", self.client.hmget(ITEMS, ids)):
                if raw is None:
                    continue
                record = cast("DeadLetterRecord", json.loads(raw))
                if queue is not None and record.get("queue") != queue:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                records.append(record)
                if len(records) == limit:
                    break
        return records

    def remove(self, message_id: str) -> bool:
        record = self.get(message_id)
        return bool(self._remove(keys=[ITEMS, INDEX, COUNTS], args=[message_id, record["queue"]]))

    def count(self, queue: str | None = None) -> int:
        if queue is None:
            return int(self.client.zcard(INDEX))
        return int(cast("bytes | None", self.client.hget(COUNTS, queue)) or 0)
