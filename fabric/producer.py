"""The producer API of the Service Integration Guide, on Celery.

    message_id = get_message_queue().enqueue("workflow_execution", {"workflow_id": "wf-1", "input_data": {}})

``enqueue`` validates the payload against its queue's contract (:mod:`fabric.contracts`) and sends a Celery
task message *by name*, so producers need none of the worker code. The message id is the Celery task id.
The guide's pull-style ``dequeue/ack/nack`` loop is gone: Celery workers consume, and acks belong to Celery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, group, signals
from kombu.exceptions import OperationalError

from config import QUEUES, Settings, get_settings
from config.queues import Queue
from fabric import celery_config, deliveries
from fabric.contracts import (
    EXECUTE,
    Action,
    ExecuteWorkflow,
    JsonObject,
    Payload,
    known_actions,
    resolve_queue,
    validate,
)
from fabric.dead_letters import DeadLetterRecord, DeadLetterStore
from fabric.envelopes import pack_items
from fabric.errors import BackendUnavailable, InvalidInput, NotFound
from fabric.redis_clients import get_redis
from fabric.registry import PerProcess
from fabric.sent_events import ProducerAMQP, buffer_of
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
    # Its task-sent events go in batches a tenth of a second apart (fabric.sent_events).
    app = Celery("wft-producer", set_as_current=False, amqp=ProducerAMQP)
    settings = settings or get_settings()
    app.conf.update(celery_config.build(settings))
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


@dataclass(frozen=True)
class Timing:
    """When a message may run and until when: ``countdown`` and ``expires`` in seconds, or None."""

    countdown: float | None = None
    expires: float | None = None


@dataclass
class Message:
    """One message as every send path prepares it (:meth:`MessageQueue.prepare`): the action it runs, its
    JSON payload, its priority (0-9, higher first) and its id (given, or assigned when it is sent)."""

    action: Action
    body: JsonObject
    priority: int
    id: str | None = None
    #: The task, keyword arguments and queue sent; by default the action's task with ``{"payload": body}``,
    #: on the action's queue.
    task: str = ""
    kwargs: JsonObject | None = None
    queue: Queue | None = None

    def __post_init__(self) -> None:
        self.task = self.task or self.action.task
        self.queue = self.queue or self.action.queue
        if self.kwargs is None:
            self.kwargs = {"payload": self.body}

    def assign_id(self) -> str:
        """The message's id: the one it has (given, or assigned before), else a new UUID from now on."""
        self.id = self.id or str(uuid.uuid4())
        return self.id


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

    def prepare(
        self, queue_name: object, payload: object, priority: int | None = None, message_id: str | None = None
    ) -> Message:
        """Validate one message as every send path does: the payload against its queue's contract, the
        priority (the call's, else the payload's own ``priority`` field, else 0), and an execution's id (its
        message id unless the payload names one, so it stays the same through redeliveries and replays).

        Raises :class:`InvalidInput` naming the problem. Sends nothing."""
        action, body = validate(queue_name, payload)
        effective = priority if priority is not None else body.get("priority", 0)
        checked = int(_check_range("priority", effective, 0, 9, integer=True))
        if action.model is ExecuteWorkflow:
            message_id = message_id or str(uuid.uuid4())
            body.setdefault("execution_id", message_id)
        return Message(action, body, checked, message_id)

    def timing(self, delay_seconds: float = 0, ttl_seconds: float | None = None) -> Timing:
        """Check ``delay_seconds`` (0 .. ``MAX_DELAY_SECONDS``) and ``ttl_seconds`` (1 ..
        ``MAX_TTL_SECONDS``, longer than the delay). Raises :class:`InvalidInput`."""
        delay = _check_range("delay_seconds", delay_seconds, 0, self.settings.max_delay_seconds)
        ttl = None
        if ttl_seconds is not None:
            ttl = _check_range("ttl_seconds", ttl_seconds, 1, self.settings.max_ttl_seconds)
            if ttl <= delay:
                raise InvalidInput(
                    f"ttl_seconds ({ttl_seconds}) must be longer than delay_seconds ({delay_seconds}), "
                    "or the message would expire before it may run"
                )
        return Timing(countdown=delay or None, expires=ttl)

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
        message = self.prepare(queue_name, payload, priority, message_id)
        timing = self.timing(delay_seconds, ttl_seconds)
        try:
            return self._publish(message, timing)
        except OperationalError as exc:
            raise self._unreachable(f"could not send to queue '{message.queue}'", exc) from exc

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
        messages = [
            self._prepare_at(index, queue, payload, priority) for index, payload in enumerate(payloads)
        ]
        timing = self.timing(delay_seconds, ttl_seconds)
        bulk = all(message.action.bulk for message in messages)
        try:
            return self._send_many(queue, messages, timing, bulk)
        except OperationalError as exc:
            after = (
                "; envelopes sent before the failure stay queued, and sending the call again is safe "
                "(every bulk write is an upsert)"
                if bulk
                else ""
            )
            raise self._unreachable(
                f"could not send {len(messages)} messages to '{queue.value}'", exc, after
            ) from exc

    def enqueue_group(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Validate every ``(queue_name, payload)`` and send them together as a Celery ``group``.

        Nothing is sent if any payload is invalid; the error names its position. Returns the message ids.
        """
        prepared = []
        for index, (queue_name, payload) in enumerate(messages):
            try:
                prepared.append(self.prepare(queue_name, payload))
            except InvalidInput as exc:
                raise InvalidInput(f"message {index}: {exc}") from None
        for message in prepared:
            message.assign_id()
        try:
            self._send_group(prepared)
        except OperationalError as exc:
            raise self._unreachable(f"could not send a group of {len(prepared)} messages", exc) from exc
        return [str(message.id) for message in prepared]

    def _prepare_at(self, index: int, queue: Queue, payload: object, priority: int | None) -> Message:
        try:
            return self.prepare(queue, payload, priority)
        except InvalidInput as exc:
            raise InvalidInput(f"payloads[{index}]: {exc}") from None

    def pack_envelopes(
        self, queue: Queue, messages: list[Message]
    ) -> Iterator[tuple[Message, list[Message]]]:
        """Pack prepared bulk messages into envelopes of ``BULK_ENVELOPE_SIZE``, one at a time: yields each
        envelope (a ``<queue>.bulk`` message with its own id ``E``) and the messages it carries, whose ids
        are ``E.0``, ``E.1``, ... (:func:`fabric.statuses.item_id`). Sends nothing."""
        size = self.settings.bulk_envelope_size
        for start in range(0, len(messages), size):
            chunk = messages[start : start + size]
            items = [{"action": message.action.name, "payload": message.body} for message in chunk]
            # One compressed text (see fabric.envelopes for why and what it saves).
            packed = {"packed_items": pack_items(items)}
            envelope = Message(
                chunk[0].action, {}, chunk[0].priority, str(uuid.uuid4()), f"{queue.value}.bulk", packed
            )
            yield envelope, chunk

    # --- the transport: above, messages are validated and prepared; below, they are sent ---------------
    # (fabric.testing.InMemoryMessageQueue records instead: it replaces _send_many, _send_group and _publish.)
    def _send_many(self, queue: Queue, messages: list[Message], timing: Timing, bulk: bool) -> list[str]:
        """Send :meth:`enqueue_many`'s prepared messages: in envelopes when ``bulk``, else one Celery message
        each, pipelined. Returns their ids. Raises kombu's OperationalError when the broker is unreachable."""
        with self.app.producer_or_acquire() as producer:
            if bulk:
                return self._send_envelopes(producer, queue, messages, timing)
            with producer.batch(max_size=1000):  # 1,000 Redis commands per round trip
                return [self._publish(message, timing, producer) for message in messages]

    def _send_group(self, messages: list[Message]) -> None:
        """Send prepared messages (ids assigned) together as one Celery ``group``."""
        signatures = [
            self.app.signature(message.task, kwargs=message.kwargs, **self._options(message, Timing()))
            for message in messages
        ]
        group(signatures).apply_async()

    def _send_envelopes(
        self, producer: Any, queue: Queue, messages: list[Message], timing: Timing
    ) -> list[str]:
        """Pack the messages into envelopes of ``BULK_ENVELOPE_SIZE`` and send each as soon as it is packed,
        so workers start on the first while the rest are packed. Message i of envelope E is ``E.i``: no
        id travels, and the consumer records the outcome of a whole envelope at once. (Bulk payloads carry
        no priority of their own: an envelope has the call's.)"""
        ids: list[str] = []
        with producer.batch(max_size=1):
            for envelope, chunk in self.pack_envelopes(queue, messages):
                self._publish_envelope(envelope, len(chunk), timing, producer)
                ids += [item_id(str(envelope.id), i) for i in range(len(chunk))]
        return ids

    def _publish_envelope(self, envelope: Message, count: int, timing: Timing, producer: Any = None) -> None:
        """Send one packed envelope of ``count`` messages (its kwargs shown as a count, not the text)."""
        self._publish(envelope, timing, producer, kwargsrepr=f"{{'packed_items': <{count} messages>}}")

    def _options(self, message: Message, timing: Timing) -> dict[str, Any]:
        queue = message.action.queue.value if message.queue is None else message.queue.value
        return {
            "task_id": message.id,
            "queue": queue,
            "routing_key": queue,
            "priority": celery_config.broker_priority(message.priority, self.settings.effective_broker_url),
            "countdown": timing.countdown,
            "expires": timing.expires,
            "headers": {"wft_priority": message.priority},
        }

    def _publish(self, message: Message, timing: Timing, producer: Any = None, **extra: Any) -> str:
        """Send one prepared message by task name (the producer needs none of the worker code; what follows
        an execution is attached by the worker that runs it). Returns its id. Raises kombu's
        OperationalError when the broker is unreachable."""
        message_id = message.assign_id()
        self.app.send_task(
            message.task, kwargs=message.kwargs, producer=producer, **self._options(message, timing), **extra
        )
        return message_id

    def _unreachable(self, what: str, exc: BaseException, after: str = "") -> BackendUnavailable:
        broker = redact_url(self.settings.effective_broker_url)
        return BackendUnavailable(f"{what}: broker at {broker} is unreachable ({exc}){after}")

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
            dead = self._dead_lettered(name)
        except (redis.RedisError, OperationalError) as exc:
            raise BackendUnavailable(f"could not read the depth of queue {name!r}: {exc}") from exc
        return {"queue": name, "pending": pending, "dead_lettered": dead}

    def _dead_lettered(self, name: str) -> int:
        return self.dead_letters.count(None if name == Queue.DEAD_LETTER else name)

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
        """Send the task-sent events still kept, and close the broker and result-backend connections this
        instance opened."""
        sent_events = buffer_of(self.app)
        if sent_events is not None:
            sent_events.close()
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
    ) -> list[DeadLetterRecord]:
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
        kwargs = cast("JsonObject", record.get("kwargs") or {})
        payload = cast("JsonObject", kwargs.get("payload", {}))
        if record["task"] == EXECUTE.task and isinstance(payload, dict) and "execution_id" not in payload:
            # The execution keeps its id (its first message's) through a replay, whoever sent it first.
            payload = {**payload, "execution_id": record["id"]}
        action = next((a for a in known_actions() if a.task == record["task"]), None) or Action(
            queue, record["task"], Payload, record["task"]
        )  # the action is descriptive only: the task, arguments and queue are the record's
        # Sent as it was (a whole envelope dead-lettered as one goes back as it came; its messages are then
        # "<new id>.i"), not validated again: the contract may have changed since it was accepted.
        envelope = kwargs if record["task"] == f"{queue.value}.bulk" else None
        message = Message(action, payload, int(record.get("priority", 0)), str(uuid.uuid4()),
                          task=record["task"], kwargs=envelope, queue=queue)  # fmt: skip
        try:
            new_id = self._publish(message, Timing())
        except OperationalError as exc:
            raise self._unreachable(f"could not replay {message_id} to queue '{queue.value}'", exc) from exc
        self.dead_letters.remove(message_id)
        return new_id

    def purge_dead_letter(self, message_id: str) -> None:
        """Drop a dead letter for good."""
        if not self.dead_letters.remove(message_id):
            raise NotFound(f"no dead letter with id {message_id!r}")


_queue: PerProcess[MessageQueue] = PerProcess("message queue", MessageQueue)


def get_message_queue() -> MessageQueue:
    """This process's :class:`MessageQueue`, built on first use (see :mod:`fabric.registry`)."""
    return _queue.get()


def reset_message_queue() -> None:
    """Close and forget this process's instance (tests, settings reloads)."""
    _queue.reset()
