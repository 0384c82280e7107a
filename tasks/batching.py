"""Bulk writes for one-message-per-document queues: a group commit inside the worker process.

Producers send one message per document (``indexing_tasks.index_execution``, ``vector_tasks.embed_workflow``
...); writing each on its own costs a transaction (or an HTTP request, or an embedding call) per document.
Here every task body hands its documents to a :class:`BatchWriter` and *waits* until they are written:

- the first waiter of a batch leads it: it waits until the batch holds ``max_size`` messages (or as many as
  the process can run at once, see :func:`process_slots`), until every task of the process waits in some
  writer (no more messages can arrive then: the broker hands a process only as many unacknowledged
  messages as it has slots), or until ``flush_interval`` has passed; then it writes every document of the
  batch in one bulk call and wakes the others;
- each task returns only after its own document is written, so ``acks_late`` acks a message after its write:
  a crash before the flush loses nothing (the messages are unacked and come back), and a redelivery writes
  nothing twice (every write is an upsert by id);
- each message keeps its own outcome: a transient failure of the bulk write is raised in every task of the
  batch (each retries on its own through :class:`tasks.base.BaseTask`); a permanent one (bad input) makes the
  batch fall back to one write per message (:func:`tasks.writers.write_groups`, the fallback the envelope
  consumer uses too), so only the bad message fails and is dead-lettered.

Batches need several messages in flight in one process: run the indexing and vector workers with the threads
pool (``-P threads -c 32``; prefetch stays 1 per thread). Under prefork each child runs one task at a time, so
a batch is that one message, written at once (no waiting): correct, just not batched.

Every flush is counted in Redis (:func:`batch_stats`) so operators and tests can see the batch sizes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from celery.signals import celeryd_after_setup
from celery.utils.log import get_task_logger

from config import get_settings
from fabric import keys
from fabric.redis_clients import get_redis
from fabric.registry import PerProcess
from tasks.writers import WRITERS, Writer, write_groups

logger = get_task_logger(__name__)

T = TypeVar("T")

#: Redis hash of flush counters: ``<writer>:flushes``, ``<writer>:messages``, ``<writer>:documents``.
STATS_KEY = keys.BATCHING_STATS

# How many tasks one worker process runs at the same time; set once by the worker before it forks.
_slots: dict[str, int] = {"slots": 1}

# Tasks of this process parked in a writer, and the writers. When every slot is parked, no more messages
# can arrive (the broker hands a process at most prefetch = slots unacknowledged messages): every open
# batch is written at once instead of waiting out its interval.
_park_lock = threading.Lock()
_parked: dict[str, int] = {"tasks": 0}
_writers: weakref.WeakSet[BatchWriter[Any]] = weakref.WeakSet()


def _park(delta: int) -> None:
    with _park_lock:
        _parked["tasks"] += delta
        if delta > 0 and _parked["tasks"] >= process_slots():
            for writer in list(_writers):
                writer._close_open()


@celeryd_after_setup.connect
def _record_pool(sender: str, instance: Any, conf: Any, **kwargs: Any) -> None:
    """Remember whether this worker's tasks share one process (threads, gevent, eventlet) and how many."""
    pool = getattr(instance, "pool_cls", None)
    module = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    concurrency = int(getattr(instance, "concurrency", 1) or 1)
    shared = any(kind in str(module) for kind in ("thread", "gevent", "eventlet"))
    _slots["slots"] = concurrency if shared else 1


def process_slots() -> int:
    """Tasks this process can run at once: the pool size under threads/gevent/eventlet, else 1."""
    return _slots["slots"]


def set_process_slots(slots: int) -> None:
    """Override :func:`process_slots` (benchmarks and tests that drive a writer from their own threads)."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    _slots["slots"] = slots


@dataclass(eq=False)
class _Entry(Generic[T]):
    docs: list[T]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch(Generic[T]):
    entries: list[_Entry[T]] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class BatchWriter(Generic[T]):
    """Group commit of documents from concurrent task bodies into bulk writes.

    ``write(docs)`` is the bulk call (e.g. ``search.bulk_index_executions``); it receives the documents of
    every message of the batch, de-duplicated by ``key`` (the last one wins, as separate upserts would).
    """

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], object],
        key: Callable[[T], Hashable] | None = None,
        max_size: int | None = None,
        flush_interval: float | None = None,
    ) -> None:
        self.name = name
        self.writer = Writer(name, _as_document, write, key)
        self._max_size = max_size
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._open: _Batch[T] | None = None
        with _park_lock:
            _writers.add(self)

    def _close_open(self) -> None:
        with self._lock:
            if self._open is not None:
                self._open.full.set()
                self._open = None

    @property
    def max_size(self) -> int:
        return self._max_size or get_settings().batch_max_size

    @property
    def flush_interval(self) -> float:
        return self._flush_interval or get_settings().batch_flush_interval

    def _target(self) -> int:
        return max(1, min(self.max_size, process_slots()))

    def submit(self, docs: Sequence[T]) -> int:
        """Write ``docs`` (one message's documents) in the next bulk write; block until it is written.

        Returns how many documents this message carried. Raises what the bulk write raised for this message
        (a :class:`~fabric.errors.TransientError` to retry, a PermanentError for bad input).
        """
        entry: _Entry[T] = _Entry(list(docs))
        with self._lock:
            batch = self._open
            leader = batch is None
            if batch is None:
                batch = self._open = _Batch()
            batch.entries.append(entry)
            if len(batch.entries) >= self._target():
                batch.full.set()
                self._open = None  # the next message starts the next batch while this one is written
        _park(+1)
        try:
            if leader:
                batch.full.wait(self.flush_interval)
                with self._lock:
                    if self._open is batch:
                        self._open = None
                self._flush(batch.entries)
            else:
                entry.done.wait()
        finally:
            _park(-1)
        if entry.error is not None:
            raise entry.error
        return len(entry.docs)

    def _flush(self, entries: list[_Entry[T]]) -> None:
        try:
            refused = write_groups(self.writer, [entry.docs for entry in entries])
            for index, error in refused.items():  # handed to that message's task to raise
                entries[index].error = error
            self._count(entries)
        except BaseException as exc:  # every waiting task raises it (and retries or fails)
            for entry in entries:
                if entry.error is None:
                    entry.error = exc
        finally:
            for entry in entries:
                entry.done.set()

    def _count(self, entries: list[_Entry[T]]) -> None:
        documents = sum(len(e.docs) for e in entries if e.error is None)
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(STATS_KEY, f"{self.name}:flushes", 1)
        pipe.hincrby(STATS_KEY, f"{self.name}:messages", len(entries))
        pipe.hincrby(STATS_KEY, f"{self.name}:documents", documents)
        pipe.execute()


def _as_document(item: Any) -> list[Any]:
    return [item]


_writers_by_action: PerProcess[BatchWriter[Any]] = PerProcess(
    "batch writers", lambda action: BatchWriter(WRITERS[action].name, WRITERS[action].write,
                                                key=WRITERS[action].key),
    close=lambda writer: None,
)  # fmt: skip


def batch_writer(action: str) -> BatchWriter[Any]:
    """This process's batch writer of ``action``'s documents (:data:`tasks.writers.WRITERS`)."""
    return _writers_by_action.get(action)


def batch_stats() -> dict[str, dict[str, int]]:
    """Flush counters of every writer since the last :func:`reset_batch_stats`:
    ``{writer: {"flushes": n, "messages": n, "documents": n}}``."""
    raw: Mapping[bytes, bytes] = get_redis().hgetall(STATS_KEY)  # type: ignore[assignment]
    out: dict[str, dict[str, int]] = {}
    for field_name, value in raw.items():
        writer, _, counter = field_name.decode().rpartition(":")
        out.setdefault(writer, {})[counter] = int(value)
    return out


def reset_batch_stats() -> None:
    """Forget the flush counters."""
    get_redis().delete(STATS_KEY)
