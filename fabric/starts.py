"""Deferred starts: a first delivery's STARTED state and delivery count written with its final state.

Before every task body the base task counted the delivery and stored STARTED (one script, one round trip);
after it, Celery's tracer stored the final state (another). For a task that ends in a few milliseconds the
STARTED state is overwritten before anybody can read it, and on two cores the first round trip was a tenth
of a noop task's CPU time. So, for a delivery the broker does not flag as redelivered:

- the base task :meth:`~PendingStarts.begin`\\ s a start instead of writing it: nothing is sent yet;
- a task still running :data:`START_GRACE` seconds later gets its STARTED state and its count written by
  this process's start thread, as before (``get_status`` says ``STARTED`` from then on);
- a task that ends sooner has its delivery counted in the same script that stores its final state
  (:mod:`fabric.result_backend`): one round trip per task, as plain Celery does;
- a task that ends without a stored state (``Ignore``, ``Reject``, ``ignore_result``) is counted alone when
  its process cleans up after it.

The final state never lands before a STARTED state written for the same task: :meth:`~PendingStarts.finish`
waits for a write in flight, so ``store_state``'s rule (a stored SUCCESS is never replaced) is all the
ordering the states need.

Poison messages are still caught before their body runs. A message redelivered after its worker died is
flagged by the broker (kombu sets ``redelivered`` when it restores a Redis message; RabbitMQ sets it on every
redelivery), and a redelivery is counted before its body runs, as every delivery was: at least 2, since a
first delivery that died within the grace period was never counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: Seconds a first delivery runs before its STARTED state and delivery count are written on their own.
START_GRACE = 0.05
#: Seconds a final state waits for a STARTED write in flight before it is stored anyway.
WRITE_WAIT = 10.0
#: Seconds before a STARTED write that failed is tried again.
RETRY_AFTER = 1.0
#: Seconds without any pending start after which the start thread sleeps until the next one.
IDLE_AFTER = 2.0


@dataclass(frozen=True)
class DeliveryCount:
    """What counting one delivery writes: ``HINCRBY key attempt 1`` and ``EXPIRE key ttl``."""

    key: str
    attempt: int
    ttl: int


@dataclass(eq=False)
class _Start:
    task_id: str
    count: DeliveryCount
    write: Callable[[], object]
    due: float
    written: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class PendingStarts:
    """The starts of this process's running first deliveries, and the thread that writes those that run
    longer than ``grace`` seconds. Safe to use from every thread of the process (the threads pool runs
    many tasks at once); a forked child starts with none (:func:`_after_fork_in_child`)."""

    def __init__(self, grace: float = START_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Start] = {}
        self._writing: dict[str, _Start] = {}
        self._current = threading.local()
        self._wake = threading.Event()
        self._idle = False
        self._thread: threading.Thread | None = None

    def begin(self, task_id: str, count: DeliveryCount, write: Callable[[], object]) -> None:
        """Task ``task_id`` starts: ``write()`` (its STARTED state and ``count``) runs if it is still running
        ``grace`` seconds from now."""
        start = _Start(task_id, count, write, self.clock() + self.grace)
        with self._lock:
            self._pending[task_id] = start
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wft-deferred-starts", daemon=True)
                self._thread.start()
            elif self._idle:
                self._idle = False
                self._wake.set()
        self._current.task_id = task_id

    def finish(self, task_id: str) -> DeliveryCount | None:
        """Task ``task_id`` ends: the delivery count its caller must write with the final state, or None when
        there is none to write (the start was written, or there was no pending start). Waits for a STARTED
        write in flight, so the final state is stored after it."""
        if getattr(self._current, "task_id", None) == task_id:
            self._current.task_id = None
        while True:
            with self._lock:
                start = self._pending.pop(task_id, None)
                if start is not None:
                    return start.count
                in_flight = self._writing.get(task_id)
            if in_flight is None:
                return None
            if not in_flight.done.wait(WRITE_WAIT):
                logger.warning(
                    "the STARTED state of %s is still being written; storing its final state", task_id
                )
                return None
            if in_flight.written:
                return None
            # The write failed and the start is pending again: take it back.

    def write_now(self, task_id: str) -> None:
        """Write task ``task_id``'s pending start (STARTED and its count) now, in this thread, for a body
        that reads its own delivery count; wait for it if it is being written already."""
        with self._lock:
            start = self._pending.pop(task_id, None)
            if start is not None:
                self._writing[task_id] = start
            in_flight = self._writing.get(task_id) if start is None else None
        if start is not None:
            self._write(start)
        elif in_flight is not None:
            in_flight.done.wait(WRITE_WAIT)

    def finish_current(self) -> DeliveryCount | None:
        """:meth:`finish` for the task this thread began last, if it has not finished (the end of a task
        that stored no state)."""
        task_id = getattr(self._current, "task_id", None)
        return None if task_id is None else self.finish(task_id)

    def pending(self) -> int:
        """How many starts wait to be written or finished."""
        with self._lock:
            return len(self._pending) + len(self._writing)

    def _run(self) -> None:
        last_busy = self.clock()
        while True:
            time.sleep(self.grace / 2)
            now = self.clock()
            with self._lock:
                due = [s for s in self._pending.values() if s.due <= now]
                for start in due:
                    del self._pending[start.task_id]
                    self._writing[start.task_id] = start
                if self._pending or due:
                    last_busy = now
                elif now - last_busy >= IDLE_AFTER:
                    self._idle = True  # begin() wakes the thread again
                    self._wake.clear()
                sleeping = self._idle
            for start in due:
                self._write(start)
            if sleeping:
                self._wake.wait()
                last_busy = self.clock()

    def _write(self, start: _Start) -> None:
        try:
            start.write()
            start.written = True
        except Exception as exc:
            logger.warning(
                "could not store the STARTED state of %s (tried again later): %s", start.task_id, exc
            )
        finally:
            with self._lock:
                self._writing.pop(start.task_id, None)
                if not start.written:  # try again; or the final state counts the delivery
                    again = _Start(start.task_id, start.count, start.write, self.clock() + RETRY_AFTER)
                    self._pending[start.task_id] = again
            start.done.set()


#: This process's pending starts (the base task begins them, the result backend finishes them).
pending_starts = PendingStarts()


def _after_fork_in_child() -> None:
    # A forked pool process inherits the parent's dicts and locks, but not its thread.
    pending_starts._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def redelivered(request: object) -> bool:
    """Whether the broker flagged this delivery as a redelivery (kombu sets both the header and the
    delivery info when it restores a message; AMQP brokers set the delivery info)."""
    if getattr(request, "redelivered", False):
        return True
    delivery_info = getattr(request, "delivery_info", None)
    return bool(isinstance(delivery_info, dict) and delivery_info.get("redelivered"))
