"""The producer API of the Service Integration Guide, on Celery.

    message_id = get_message_queue().enqueue("workflow_execution", {"workflow_id": "wf-1", "input_data": {}})

``enqueue`` validates the payload against its queue's contract (:mod:`fabric.contracts`) and sends a Celery
task message *by name*, so producers need none of the worker code. The message id is the Celery task id.
The guide's pull-style ``dequeue/ack/nack`` loop is gone: Celery workers consume, and acks belong to Celery.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, group, signals
from kombu.exceptions import OperationalError

from config import QUEUES, Settings, get_settings
from config.queues import Queue
from fabric import celery_config, deliveries
from fabric.contracts import EXECUTE, Action, ExecuteWorkflow, JsonObject, resolve_queue, validate
from fabric.dead_letters import DeadLetter, DeadLetterStore
from fabric.envelopes import pack_items
from fabric.errors import BackendUnavailable, InvalidInput, NotFound
from fabric.redis_clients import get_redis
from fabric.result_backend import ProducerRedisBackend, backend_url
from fabric.statuses import item_id, item_status, split_item_id

#: States :meth:`MessageQueue.get_status` reports beyond Celery's own.
EXPIRED = "EXPIRED"
DEAD_LETTERED = "DEAD_LETTERED"


def _expiry_is_checked_by_the_worker(properties: dict[str, Any] | None = None, **_: Any) -> None:
    """``ttl_seconds`` is enforced by the worker, from the message's ``expires`` header, on every broker.

    Celery also turns ``expires`` into an AMQP per-message TTL (``expiration``), with which RabbitMQ drops
    an expired message unseen: its status would stay PENDING instead of EXPIRED, and it would be gone
    without a trace. Without it, RabbitMQ behaves as Redis does: the worker that receives an expired
    message records it as expired and never runs it.
    """
    if properties is not None:
        properties.pop("expiration", None)


signals.before_task_publish.connect(_expiry_is_checked_by_the_worker, weak=False)


def make_producer_app(settings: Settings | None = None) -> Celery:
    """A Celery app that only sends: configured like the workers, with no task modules imported."""
    app = Celery("wft-producer", set_as_current=False)
    settings = settings or get_settings()
    conf = celery_config.build(settings)
    conf["result_backend"] = backend_url(settings.effective_result_backend, ProducerRedisBackend)
    app.conf.update(conf)
    return app


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and health output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_range(name: str, value: object, low: float, high: float, integer: bool = False) -> float:
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "a whole number" if integer else "a number"
        raise InvalidInput(f"{name} must be {kind} from {low:g} to {high:g}, got {value!r}")
    return value


class MessageQueue:
    """Enqueue work on the named queues and follow it: statuses, queue depths, dead letters."""

    def __init__(self, app: Celery | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or make_producer_app(self.settings)

    # --- the guide's names ---------------------------------------------------------------------------
    @property
    def redis_client(self) -> redis.Redis:
        """The Redis client the guide's CacheService borrows (``REDIS_URL``)."""
        return get_redis(self.settings.redis_url)

    def enqueue(
        self,
        queue_name: str,
        payload: Mapping[str, Any],
        priority: int | None = None,
        delay_seconds: float = 0,
        ttl_seconds: float | None = None,
        message_id: str | None = None,
    ) -> str:
        """Validate ``payload`` for ``queue_name`` and send it. Returns the message id (the Celery task id).

        ``priority``: 0 (default) to 9, higher runs first on every broker; when omitted, the payload's own
        ``priority`` field (the guide sends one for workflow executions) is used.
        ``delay_seconds``: run no earlier than this many seconds from now (at most ``MAX_DELAY_SECONDS``).
        ``ttl_seconds``: if no worker has started the message this many seconds from now, it is never run
        and its status says ``EXPIRED``.
        Raises :class:`InvalidInput` naming the problem (nothing is sent) or :class:`BackendUnavailable`.
        """
        action, body = validate(queue_name, payload)
        effective_priority = priority if priority is not None else body.get("priority", 0)
        pri = int(_check_range("priority", effective_priority, 0, 9, integer=True))
        delay = _check_range("delay_seconds", delay_seconds, 0, self.settings.max_delay_seconds)
        ttl = None
        if ttl_seconds is not None:
            ttl = _check_range("ttl_seconds", ttl_seconds, 1, self.settings.max_ttl_seconds)
            if ttl <= delay:
                raise InvalidInput(
                    f"ttl_seconds ({ttl_seconds}) must be longer than delay_seconds ({delay_seconds}), "
                    "or the message would expire before it may run"
                )
        message_id = message_id or str(uuid.uuid4())
        if action.model is ExecuteWorkflow and "execution_id" not in body:
            # The execution keeps its identity across redeliveries and dead-letter replays.
            body["execution_id"] = message_id
        self._send(action.task, body, action.queue, pri, message_id, countdown=delay or None, expires=ttl)
        return message_id

    def enqueue_many(
        self,
        queue_name: str,
        payloads: Sequence[Mapping[str, Any]],
        priority: int | None = None,
        delay_seconds: float = 0,
        ttl_seconds: float | None = None,
    ) -> list[str]:
        """Validate every payload as :meth:`enqueue` does, then send them all with as few broker round
        trips as kombu allows. Returns one message id per payload, in order.

        One bad payload refuses the whole call with :class:`InvalidInput` naming its index; nothing is sent.
        On ``indexing_tasks``, ``vector_tasks`` and ``analytics_tasks`` the payloads travel in envelopes of up
        to ``BULK_ENVELOPE_SIZE`` logical messages, each with its own id, status and dead letter, consumed and
        written in bulk (``<queue>.bulk``). Workflow executions stay one Celery message each (each runs its
        own pipeline), published through one pipelined batch.
        """
        queue = resolve_queue(queue_name)
        if isinstance(payloads, Mapping) or not isinstance(payloads, Sequence):
            raise InvalidInput("payloads must be a list of JSON objects")
        validated = []
        for index, payload in enumerate(payloads):
            try:
                validated.append(validate(queue.value, payload))
            except InvalidInput as exc:
                raise InvalidInput(f"payloads[{index}]: {exc}") from None
        pri = int(_check_range("priority", priority if priority is not None else 0, 0, 9, integer=True))
        delay = _check_range("delay_seconds", delay_seconds, 0, self.settings.max_delay_seconds)
        ttl = None
        if ttl_seconds is not None:
            ttl = _check_range("ttl_seconds", ttl_seconds, 1, self.settings.max_ttl_seconds)
        countdown = delay or None
        bulk = all(action.bulk for action, _ in validated)
        try:
            with self.app.producer_or_acquire() as producer:
                if bulk:
                    return self._send_envelopes(producer, queue, validated, pri, countdown, ttl)
                return self._send_each(producer, validated, pri, countdown, ttl)
        except OperationalError as exc:
            after = (
                "; envelopes sent before the failure stay queued, and sending the call again is safe "
                "(every bulk write is an upsert)"
                if bulk
                else ""
            )
            raise BackendUnavailable(
                f"could not send {len(validated)} messages to '{queue.value}': broker at "
                f"{redact_url(self.settings.effective_broker_url)} is unreachable ({exc}){after}"
            ) from exc

    def _send_envelopes(
        self, producer: Any, queue: Queue, validated: list[tuple[Action, JsonObject]], priority: int,
        countdown: float | None, expires: float | None,
    ) -> list[str]:  # fmt: skip
        """Pack the messages into envelopes of ``BULK_ENVELOPE_SIZE`` and send each as soon as it is packed,
        so workers start on the first while the rest are packed. Message i of envelope E is ``E.i``: no
        id travels, and the consumer records the outcome of a whole envelope at once."""
        ids: list[str] = []
        size = self.settings.bulk_envelope_size
        with producer.batch(max_size=1):
            for start in range(0, len(validated), size):
                envelope = str(uuid.uuid4())
                chunk = validated[start : start + size]
                items = [{"action": action.name, "payload": body} for action, body in chunk]
                options = self._options(queue, priority, envelope, countdown, expires)
                # One compressed text (see fabric.envelopes for why and what it saves).
                self.app.send_task(
                    f"{queue.value}.bulk", kwargs={"packed_items": pack_items(items)}, producer=producer,
                    kwargsrepr=f"{{'packed_items': <{len(items)} messages>}}", **options,
                )  # fmt: skip
                ids += [item_id(envelope, i) for i in range(len(items))]
        return ids

    def _send_each(
        self, producer: Any, validated: list[tuple[Action, JsonObject]], priority: int,
        countdown: float | None, expires: float | None,
    ) -> list[str]:  # fmt: skip
        """One Celery message per payload (each execution runs its own pipeline), 1,000 Redis commands per
        round trip."""
        ids = [str(uuid.uuid4()) for _ in validated]
        with producer.batch(max_size=1000):
            for message_id, (action, body) in zip(ids, validated, strict=True):
                if action.model is ExecuteWorkflow and "execution_id" not in body:
                    body["execution_id"] = message_id
                options = self._options(action.queue, priority, message_id, countdown, expires)
                self.app.send_task(action.task, kwargs={"payload": body}, producer=producer, **options)
        return ids

    def enqueue_group(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Validate every ``(queue_name, payload)`` and send them together as a Celery ``group``.

        Nothing is sent if any payload is invalid; the error names its position. Returns the message ids.
        """
        signatures = []
        ids = []
        for index, (queue_name, payload) in enumerate(messages):
            try:
                action, body = validate(queue_name, payload)
            except InvalidInput as exc:
                raise InvalidInput(f"message {index}: {exc}") from None
            message_id = str(uuid.uuid4())
            options = self._options(action.queue, 0, message_id)
            signatures.append(self.app.signature(action.task, kwargs={"payload": body}, **options))
            ids.append(message_id)
        try:
            group(signatures).apply_async()
        except OperationalError as exc:
            raise BackendUnavailable(f"could not send a group of {len(ids)} messages: {exc}") from exc
        return ids

    def _options(
        self, queue: Queue, priority: int, message_id: str, countdown: float | None = None,
        expires: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "task_id": message_id,
            "queue": queue.value,
            "routing_key": queue.value,
            "priority": celery_config.broker_priority(priority, self.settings.effective_broker_url),
            "countdown": countdown,
            "expires": expires,
            "headers": {"wft_priority": priority},
        }

    def _send(
        self,
        task: str,
        body: JsonObject,
        queue: Queue,
        priority: int,
        message_id: str,
        countdown: float | None = None,
        expires: float | None = None,
        kwargs: JsonObject | None = None,
    ) -> None:
        """Send ``task`` with ``{"payload": body}`` (or with ``kwargs`` exactly, when given), by task name:
        the producer needs none of the worker code, and what follows (an execution's pipeline) is attached
        by the worker that runs it."""
        options = self._options(queue, priority, message_id, countdown, expires)
        kwargs = {"payload": body} if kwargs is None else kwargs
        try:
            self.app.send_task(task, kwargs=kwargs, **options)
        except OperationalError as exc:
            raise BackendUnavailable(
                f"could not send to queue '{queue.value}': broker at "
                f"{redact_url(self.settings.effective_broker_url)} is unreachable ({exc})"
            ) from exc

    def get_status(self, message_id: str) -> dict[str, Any]:
        """Where a message is: ``state`` (PENDING, STARTED, RETRY, SUCCESS, FAILURE, EXPIRED, REVOKED,
        DEAD_LETTERED), ``result`` or ``error``, and ``attempts`` (deliveries to a worker so far).

        PENDING means queued, delayed, or unknown: the broker cannot tell these apart. A message of a bulk
        envelope (``E.i``) whose envelope has not finished reports the envelope's state (STARTED, RETRY,
        or DEAD_LETTERED when the envelope was dead-lettered whole, with ``envelope`` naming it).
        """
        try:
            logical = item_status(self.redis_client, message_id)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"could not read the status of {message_id}: {exc}") from exc
        if logical is not None:
            return logical
        in_envelope = split_item_id(message_id)
        if in_envelope is not None:
            envelope = self._task_status(in_envelope[0])
            if envelope["state"] not in {"PENDING", "SUCCESS"}:
                dead = envelope["dead_letter"]  # the envelope's record: replay it by the envelope's id
                if dead is not None:
                    dead = {k: v for k, v in dead.items() if k != "kwargs"}
                return {**envelope, "id": message_id, "envelope": in_envelope[0], "result": None,
                        "dead_letter": dead}  # fmt: skip
        return self._task_status(message_id)

    def _task_status(self, message_id: str) -> dict[str, Any]:
        try:
            meta = self.app.backend.get_task_meta(message_id)
            attempts = deliveries.attempts(self.redis_client, message_id)
            dead = self.dead_letters.get(message_id) if self.dead_letters.contains(message_id) else None
        except (redis.RedisError, OperationalError) as exc:
            raise BackendUnavailable(f"could not read the status of {message_id}: {exc}") from exc
        state = str(meta.get("status", "PENDING"))
        result: Any = meta.get("result")
        error = None
        if isinstance(result, BaseException):
            error = {"type": type(result).__name__, "message": str(result)}
            result = None
            if state == "REVOKED" and error["message"] == "expired":
                state = EXPIRED
        if dead is not None:
            state = DEAD_LETTERED
            error = dead["error"]
        return {
            "id": message_id,
            "state": state,
            "result": result,
            "error": error,
            "attempts": attempts,
            "task": meta.get("name"),
            "queue": meta.get("queue") or (dead or {}).get("queue"),
            "date_done": str(meta["date_done"]) if meta.get("date_done") else None,
            "dead_letter": dead,
        }

    def queue_stats(self, name: str) -> dict[str, Any]:
        """``pending`` messages waiting in the broker for queue ``name`` and ``dead_lettered`` messages that
        came from it (for ``dead_letter`` itself: records kept, plus dead letters not yet stored)."""
        if name not in QUEUES:
            raise InvalidInput(f"unknown queue {name!r}; expected one of: {', '.join(QUEUES)}")
        try:
            pending = self._pending(name)
            dead = self.dead_letters.count(None if name == Queue.DEAD_LETTER else name)
        except (redis.RedisError, OperationalError) as exc:
            raise BackendUnavailable(f"could not read the depth of queue {name!r}: {exc}") from exc
        return {"queue": name, "pending": pending, "dead_lettered": dead}

    def _pending(self, name: str) -> int:
        with self.app.connection_for_read() as conn:
            channel = conn.default_channel
            size = getattr(channel, "_size", None)
            if size is not None:  # virtual transports (Redis): sum of the per-priority lists
                return int(size(name))
            _, count, _ = channel.queue_declare(queue=name, passive=True)
            return int(count)

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "broker": ..., "latency_ms": ...}``; never raises."""
        broker = redact_url(self.settings.effective_broker_url)
        started = time.perf_counter()
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
            self.redis_client.ping()
        except Exception as exc:
            return {"status": "unhealthy", "broker": broker, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "status": "healthy",
            "broker": broker,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    def close(self) -> None:
        """Close the broker and result-backend connections this instance opened."""
        self.app.close()
        backend = self.app._backend  # None unless a status was ever read
        client = getattr(backend, "__dict__", {}).get("client")
        if client is not None:
            client.close()
            client.connection_pool.disconnect()

    # --- dead letters ----------------------------------------------------------------------------------
    @cached_property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(self.redis_client)

    def list_dead_letters(
        self, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Dead letters, newest first: the original message, the error, the attempts and the times."""
        if queue is not None:
            resolve_queue(queue)
        return self.dead_letters.list(queue=queue, limit=limit, offset=offset)

    def replay_dead_letter(self, message_id: str) -> str:
        """Send a dead letter's original message again, to its original queue, as a new message.

        Returns the new message id; the dead letter is removed once the message is sent.
        Raises :class:`NotFound` if there is no such dead letter.
        """
        record = self.dead_letters.get(message_id)
        queue = resolve_queue(record["queue"])
        new_id = str(uuid.uuid4())
        kwargs = cast("JsonObject", record.get("kwargs") or {})
        payload = cast("JsonObject", kwargs.get("payload", {}))
        if record["task"] == EXECUTE.task and isinstance(payload, dict) and "execution_id" not in payload:
            # The execution keeps its id (its first message's) through a replay, whoever sent it first.
            payload = {**payload, "execution_id": record["id"]}
        # A whole envelope (dead-lettered as one: poison, retries exhausted) goes back as it came; its
        # messages are then "<new id>.i".
        envelope = kwargs if record["task"] == f"{queue.value}.bulk" else None
        self._send(record["task"], payload, queue, int(record.get("priority", 0)), new_id, kwargs=envelope)
        self.dead_letters.remove(message_id)
        return new_id

    def purge_dead_letter(self, message_id: str) -> None:
        """Drop a dead letter for good."""
        if not self.dead_letters.remove(message_id):
            raise NotFound(f"no dead letter with id {message_id!r}")


_lock = threading.Lock()
_instance: MessageQueue | None = None


def get_message_queue() -> MessageQueue:
    """The process-wide :class:`MessageQueue`, built on first use."""
    global _instance  # noqa: PLW0603 - a lazily built per-process singleton, as STYLE rule 3 asks
    if _instance is None:
        with _lock:
            if _instance is None:
                _instance = MessageQueue()
    return _instance


def reset_message_queue() -> None:
    """Forget the process-wide instance (tests, settings reloads)."""
    global _instance  # noqa: PLW0603
    with _lock:
        if _instance is not None:
            _instance.close()
        _instance = None
