"""The base class of every task: delivery counting, retries of transient errors, dead-lettering.

Cross-cutting behaviour lives here once; task bodies stay thin (validate, call workflows/services, return
JSON).

- Each delivery of each attempt is counted in Redis, in the same round trip as the task's STARTED state
  (which Celery's ``task_track_started`` would store with two more): a redelivery before its body runs, a
  first delivery with its final state or once it has run ``START_GRACE`` seconds (:mod:`fabric.starts`).
  Past ``MAX_DELIVERIES`` (the worker process died every time: a poison message) the message is
  dead-lettered instead of run again.
- :class:`~fabric.errors.TransientError` is retried with exponential backoff and jitter, up to
  ``MAX_RETRIES``; any other exception fails at once.
- Every final failure (permanent error, retries exhausted, unexpected error) is dead-lettered with the
  original message, the error, the attempts and the times.
"""

from __future__ import annotations

import os
import random
from typing import Any

from celery import Task, states
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from config import get_settings
from config.queues import Queue
from fabric import deliveries
from fabric.dead_letters import DeadLetter, Reason, publish
from fabric.errors import PermanentError, TransientError
from fabric.redis_clients import get_redis
from fabric.result_backend import RedisResultBackend, expiry_seconds, text
from fabric.starts import pending_starts, redelivered
from services.resilience import CircuitOpen

logger = get_task_logger(__name__)


class PoisonMessage(PermanentError):
    """The message was delivered too many times without finishing (its worker died each time)."""


def delivery_attempts(message_id: str) -> int:
    """Every delivery of every attempt of message ``message_id`` so far, a running one included (for a body
    that reports them, as the envelope consumer does): writes its deferred start first."""
    pending_starts.write_now(message_id)
    return deliveries.attempts(get_redis(), message_id)


class BaseTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """Shared behaviour of all our tasks. Set per task: ``name`` (``<queue>.<action>``) and the body."""

    autoretry_for = (TransientError,)
    retry_backoff = 2
    retry_jitter = True
    # max_retries and retry_backoff_max come from MAX_RETRIES and RETRY_BACKOFF_MAX when the app binds the
    # task (fabric.celery_config.RetryLimits), not when this module is imported.
    #: Tasks whose failure must not produce another dead letter (the dead-letter consumer itself).
    dead_letter_on_failure = True
    #: False leaves the task's arguments out of its stored result (see fabric.result_backend).
    result_keeps_arguments = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or request.id is None:
            return super().__call__(*args, **kwargs)
        settings = get_settings()
        delivered = self._count_delivery_and_start(request, settings.result_expires)
        if delivered > settings.max_deliveries:
            error = PoisonMessage(
                f"delivered {delivered - 1} times without finishing: the worker process died each time "
                f"(MAX_DELIVERIES={settings.max_deliveries})"
            )
            logger.error("dead-lettering poison message %s: %s", request.id, error)
            self.backend.mark_as_failure(request.id, error, request=request)
            self.dead_letter(error, reason="poison", kwargs=kwargs)
            raise Ignore()
        if delivered > 1:
            logger.warning(
                "message %s delivered again (delivery %d of attempt %d)",
                request.id,
                delivered,
                request.retries,
            )
        # The tracer has pushed this delivery's request already; run the body under it.
        return self.run(*args, **kwargs)

    def _count_delivery_and_start(self, request: Any, ttl_seconds: int) -> int:
        """Count this delivery and store the STARTED state Flower and ``get_status`` show. Returns the
        delivery count.

        A first delivery on our Redis result backend (the default) begins a deferred start
        (:mod:`fabric.starts`): nothing is written before its body runs, and its count is written with its
        final state, or with its STARTED state once it has run :data:`~fabric.starts.START_GRACE` seconds.
        A redelivery is counted (at least as the second delivery) before its body runs, with its STARTED
        state in the same script; on another result backend, the state is a second round trip."""
        settings = get_settings()
        backend = self.backend
        again = redelivered(request)
        if not (
            isinstance(backend, RedisResultBackend)
            and settings.effective_result_backend == settings.redis_url
        ):
            delivered = deliveries.count_delivery(
                get_redis(), request.id, request.retries, ttl_seconds, minimum=2 if again else 1
            )
            backend.store_result(request.id, self._started(request), states.STARTED, request=request)
            return delivered

        def write(minimum: int = 1) -> int:
            return deliveries.count_delivery_and_start(
                get_redis(), request.id, request.retries, ttl_seconds,
                result_key=text(backend.get_key_for_task(request.id)),
                started_meta=backend.meta_for(request.id, self._started(request), states.STARTED, request),
                result_ttl=expiry_seconds(backend.expires), minimum=minimum,
            )  # fmt: skip

        if again or request.is_eager:
            return write(minimum=2 if again else 1)
        pending_starts.begin(
            request.id, deliveries.delivery_count(request.id, request.retries, ttl_seconds), write
        )
        return 1

    @staticmethod
    def _started(request: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "hostname": request.hostname}

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not self.dead_letter_on_failure:
            return
        reason: Reason
        if isinstance(exc, TransientError):
            reason = "retries_exhausted"
        elif isinstance(exc, PermanentError):
            reason = "permanent"
        else:
            reason = "error"
        self.dead_letter(exc, reason=reason, kwargs=kwargs)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        if isinstance(exc, CircuitOpen) and exc.retry_after is not None:
            # Come back when the breaker lets its next probe through, not sooner: retrying into an open
            # breaker only spins through the retries it has.
            countdown = max(countdown or 0.0, exc.retry_after + random.uniform(0, 1))
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        logger.warning("retrying %s after transient error: %s", task_id, exc)

    def dead_letter(self, exc: BaseException, reason: Reason, kwargs: Any) -> None:
        """Publish this message's dead letter to the ``dead_letter`` queue."""
        request = self.request
        delivery = request.delivery_info or {}
        queue = delivery.get("routing_key") or self.queue or Queue.WORKFLOW_EXECUTION.value
        headers = request.headers if isinstance(request.headers, dict) else {}
        letter = DeadLetter.of(
            exc, reason, id=request.id, task=self.name, queue=queue, kwargs=kwargs or {},
            priority=headers.get("wft_priority", 0), attempts=delivery_attempts(request.id),
            retries=request.retries, worker=request.hostname, eta=str(request.eta) if request.eta else None,
        )  # fmt: skip
        logger.error("dead-lettering %s from %s (%s): %s", request.id, queue, reason, exc)
        publish(self.app, letter)
