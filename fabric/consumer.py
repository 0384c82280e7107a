"""The worker's consumer: Celery's own, sending task events in batches a tenth of a second apart.

Flower builds every task's state from the events workers send (``task-received``, ``task-started``,
``task-succeeded``, ``task-failed``, ``task-retried``, ...), so a worker run with ``-E`` sends three or
more per task. Celery already buffers them in the worker's main process and sends a buffer as one
``task.multi`` message, but it sends the buffer at the next turn of the event loop: on a busy worker about
one message per event, each serialized and published on its own, in the main process, which also fetches,
dispatches and acknowledges every message. Measured on two cores (noop tasks, prefork -c2), events were a
third of the main process's CPU time per task and the main process was the bottleneck.

:class:`Consumer` sends the buffer :data:`EVENT_FLUSH_DELAY` seconds after the first event in it (or as
soon as it holds Celery's ``buffer_limit``, 24 events): the same events, in the same order, with the same
fields and clocks, in a tenth of the messages. Flower (Celery's ``EventReceiver``) reads ``task.multi``
messages as it reads single events, and sees each state at most 0.1 s later. A worker that stops sends
what its buffer holds first; a worker killed with ``kill -9`` loses at most the events of its last 0.1 s
(as it loses, with Celery's own buffer, those not yet sent), never a task or a result.

Set by :mod:`fabric.celery_config` as ``worker_consumer``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

logger = logging.getLogger(__name__)

#: Seconds a buffered task event may wait for others before the buffer is sent.
EVENT_FLUSH_DELAY = 0.1


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's consumer; task events are sent at most :data:`EVENT_FLUSH_DELAY` seconds after they happen."""

    _event_flush_due = False

    def on_send_event_buffered(self) -> None:
        # Called by the event dispatcher after it buffered an event (event-loop pools only: prefork).
        if self.hub is None:
            super().on_send_event_buffered()
            return
        if not self._event_flush_due:
            self._event_flush_due = True
            self.hub.call_later(EVENT_FLUSH_DELAY, self._send_buffered_events)

    def _send_buffered_events(self) -> None:
        self._event_flush_due = False
        self._flush_events()

    def _send_remaining_events(self) -> None:
        try:
            self._flush_events()
        except Exception as exc:  # the broker may be gone already: stopping must go on
            logger.warning("could not send the last buffered task events: %s", exc)

    def stop(self) -> Any:
        self._send_remaining_events()
        return super().stop()

    def shutdown(self) -> Any:
        self._send_remaining_events()
        return super().shutdown()
