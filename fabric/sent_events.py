"""Producers' ``task-sent`` events, sent in batches a tenth of a second apart.

Flower shows a message from the moment it is sent (state PENDING) only if the producer sends a
``task-sent`` event for it (``task_send_sent_event``). Celery publishes that event as a second broker
message right after the task message, serialized and published on its own: on Redis a second round trip
and, measured with ``enqueue()`` on two cores, a fifth of the producer's time per message.

:class:`SentEventBuffer` takes Celery's place as the producer app's sent-event dispatcher
(:class:`ProducerAMQP`): each event is made exactly as Celery makes it (same fields, hostname, pid and
logical clock) and kept; a thread sends what is kept as one ``task.multi`` message (which Flower and
Celery's ``EventReceiver`` read as the events it holds) :data:`SENT_EVENT_DELAY` seconds after the first
one. So a producer pays one round trip per message, as plain Celery without events does, and Flower sees
each sent message at most 0.1 s later. A ``task-sent`` that arrives after the worker's ``task-received``
changes nothing but the fields it adds: Celery's event state orders states by precedence, not arrival.

What a process still holds when it stops is sent by :meth:`SentEventBuffer.close` (``MessageQueue.close``,
``app.close``) and at interpreter exit. If the broker cannot take the events they are kept for the next
try, at most :data:`MAX_KEPT` of them (the oldest are dropped first, with a warning): events are for
monitoring, and the messages themselves are never held back by them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Any

from celery.app.amqp import AMQP
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

#: Seconds a sent event may wait for others before they are sent together.
SENT_EVENT_DELAY = 0.1
#: Most events kept while the broker refuses them.
MAX_KEPT = 10_000
#: Most events in one ``task.multi`` message.
MAX_BATCH = 500


class SentEventBuffer(EventDispatcher):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's event dispatcher for ``task-sent``, batching what it publishes (see the module)."""

    def __init__(self, app: Any, delay: float | None = None) -> None:
        # Disabled: like Celery's own sent-event dispatcher it opens no connection of its own; it borrows
        # a producer from the app's pool to send.
        super().__init__(app=app, enabled=False, buffer_while_offline=False)
        self.delay = SENT_EVENT_DELAY if delay is None else delay
        self._kept: list[Any] = []
        self._kept_lock = threading.Lock()
        self._due = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._owner = os.getpid()
        _open.add(self)

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                Event: Any = Event, **kwargs: Any) -> None:  # fmt: skip
        """Keep the event (made as Celery makes it); the thread sends it within ``delay`` seconds."""
        event = self._prepare_event(type, fields, blind=blind, Event=Event)
        with self._kept_lock:
            self._kept.append(event)
            if self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._thread = threading.Thread(target=self._run, name="wft-sent-events", daemon=True)
                self._thread.start()
        self._due.set()

    def send_kept(self) -> None:
        """Send every kept event now (in ``task.multi`` messages of at most :data:`MAX_BATCH`)."""
        while True:
            with self._kept_lock:
                batch, self._kept = self._kept[:MAX_BATCH], self._kept[MAX_BATCH:]
            if not batch:
                return
            try:
                with self.app.producer_or_acquire() as producer:
                    self._publish(batch, producer, "task.multi", retry=True, retry_policy={"max_retries": 2})
            except Exception as exc:
                with self._kept_lock:
                    kept = batch + self._kept
                    dropped = max(len(kept) - MAX_KEPT, 0)
                    self._kept = kept[dropped:]
                logger.warning(
                    "could not send %d task-sent events (Flower shows those messages once a worker takes "
                    "them): %s%s", len(batch), exc, f"; dropped the {dropped} oldest" if dropped else "",
                )  # fmt: skip
                return

    def _run(self) -> None:
        while not self._closing:
            self._due.wait()
            if self._closing:
                return
            time.sleep(self.delay)  # let the events of the next tenth of a second join
            self._due.clear()
            self.send_kept()

    def close(self) -> None:
        """Send what is kept and stop the thread."""
        if self._owner == os.getpid():
            self._closing = True
            self._due.set()
            self.send_kept()
        _open.discard(self)
        super().close()

    def _forget_parent(self) -> None:
        """In a forked child: the parent's events, thread and locks are not this process's (a lock the
        parent's thread held at the fork would never be released here)."""
        self._kept_lock = threading.Lock()
        self._due = threading.Event()
        self._kept, self._thread, self._closing = [], None, False
        self._owner = self.pid = os.getpid()


_open: weakref.WeakSet[SentEventBuffer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for buffer in list(_open):
        buffer._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def send_all_kept() -> None:
    """Send the events every buffer of this process keeps (at interpreter exit, and when a worker process
    stops: a pool process ends without running ``atexit``)."""
    for buffer in list(_open):
        if buffer._owner == os.getpid():
            buffer.send_kept()


def buffer_of(app: Any) -> SentEventBuffer | None:
    """The app's sent-event buffer, if it was built (a message was sent), else None (builds nothing)."""
    dispatcher = app.amqp.__dict__.get("_event_dispatcher")
    return dispatcher if isinstance(dispatcher, SentEventBuffer) else None


class ProducerAMQP(AMQP):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's AMQP layer of a producer app, with the batching sent-event dispatcher."""

    @cached_property
    def _event_dispatcher(self) -> SentEventBuffer:
        return SentEventBuffer(self.app)
