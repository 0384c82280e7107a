"""Test doubles for code that enqueues: an in-memory message queue that refuses what the real one refuses
and records what it would have sent, and a way to run what it recorded through the real task bodies.

    from fabric.testing import InMemoryMessageQueue, installed
    from tasks.app import app as worker_app

    def test_signup_starts_onboarding() -> None:
        with installed(InMemoryMessageQueue()) as queue:     # get_message_queue() returns it meanwhile
            SignupService().sign_up("ada@example.com")       # calls get_message_queue().enqueue(...)
            [sent] = queue.sent
            assert sent.task == "workflow_execution.execute"
            assert sent.payload["workflow_id"] == "customer-onboarding"
            [execution, *follow_ups] = queue.run(worker_app) # tasks.app.app; needs Redis: see run()
            assert execution.state == "SUCCESS" and execution.result["status"] == "completed"

With pytest, the ``message_queue_double`` fixture of :mod:`fabric.pytest_plugin` (loaded by the package's
``pytest11`` entry point) does the ``installed(...)`` part.

:class:`InMemoryMessageQueue` is a :class:`~fabric.producer.MessageQueue` whose transport records instead of
sending: ``enqueue``, ``enqueue_many`` and ``enqueue_group`` are the real methods, so payloads and options are
validated, refused (the same :class:`~fabric.errors.InvalidInput`, the same message) and given ids by the very
same code; only the three methods that talk to the broker (``_publish``, ``_send_many``, ``_send_group``) are
replaced. ``enqueue_many`` on a bulk queue packs envelopes as the real one does, so its ids are ``E.i``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery, current_app, signals
from celery.exceptions import Ignore, InvalidTaskError, Reject, Retry
from celery.result import _set_task_join_will_block, task_join_will_block
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message as KombuMessage
from kombu.serialization import dumps, loads, prepare_accept_content

from config import QUEUES, Settings
from config.queues import Queue
from fabric import producer
from fabric.contracts import JsonObject, known_actions, resolve_queue
from fabric.dead_letters import DeadLetterRecord
from fabric.errors import BackendUnavailable
from fabric.producer import Message, MessageQueue, Timing, redact_url
from fabric.redis_clients import get_redis
from fabric.registry import overridden
from fabric.statuses import item_id, split_item_id

__all__ = ["Delivery", "InMemoryMessageQueue", "SentMessage", "installed"]

#: The worker name the in-process deliveries report (``request.hostname`` in the task bodies).
HOSTNAME = f"testing@{socket.gethostname()}"


@dataclass(frozen=True)
class SentMessage:
    """One logical message as the real :class:`MessageQueue` would have sent it.

    ``payload`` is the validated payload as JSON (what the task receives as ``payload``; a copy, so changing
    it changes nothing that runs); ``priority`` is 0-9 (higher first) after the payload's own ``priority``
    was taken into account; ``delay_seconds`` is 0 when there is none; ``ttl_seconds`` None when there is
    none. ``envelope`` is the id ``E`` of the bulk envelope that carries the message (its id is then
    ``E.i``); ``group`` is the same for every message of one ``enqueue_group`` call (an id of this double's,
    not Celery's group id).
    """

    id: str
    queue: str
    task: str
    payload: JsonObject
    priority: int
    delay_seconds: float = 0
    ttl_seconds: float | None = None
    envelope: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One Celery message run by :meth:`InMemoryMessageQueue.run`, and how it ended.

    ``state``: ``SUCCESS``, ``FAILURE``, ``RETRY`` (the retry is another delivery, later in the list),
    ``IGNORED`` (the task raised ``Ignore``, e.g. a poison message), ``REJECTED`` (no such task, a body that
    is not JSON, or the task raised ``Reject``), ``EXPIRED`` (its ttl had passed: never run).
    ``result`` is the task's return value after a JSON round trip (as its stored result reads), ``error``
    the ``{"type", "message"}`` of what it raised (for ``RETRY``, of the error that caused the retry).
    ``args`` and ``kwargs`` are what the task body received, decoded from the message's JSON. ``parent_id``
    is the message whose run sent this one (follow-ups, retries, dead letters), None for those the double
    recorded.
    """

    id: str
    task: str
    queue: str
    state: Literal["SUCCESS", "FAILURE", "RETRY", "IGNORED", "REJECTED", "EXPIRED"]
    args: list[Any] = field(default_factory=list)
    kwargs: JsonObject = field(default_factory=dict)
    result: Any = None
    error: dict[str, str] | None = None
    parent_id: str | None = None
    retries: int = 0


@dataclass(frozen=True)
class _Send:
    """One publication the real queue would have made: a message, an envelope, or a group of messages."""

    kind: Literal["message", "envelope", "group"]
    messages: list[Message]
    timing: Timing
    sent_at: float
    count: int = 0  # the messages an envelope carries


@dataclass(frozen=True)
class _Wire:
    """A Celery task message as it would have reached the broker: headers, properties, serialized body."""

    task: str
    queue: str
    exchange: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str
    content_encoding: str
    body: bytes | str


class InMemoryMessageQueue(MessageQueue):
    """A :class:`MessageQueue` that records what it would send, for the tests of code that enqueues.

    Takes the settings the limits come from (``MAX_DELAY_SECONDS``, ``MAX_TTL_SECONDS``,
    ``BULK_ENVELOPE_SIZE``; default: the process's). Recording needs no server. What it offers:

    - ``enqueue``, ``enqueue_many``, ``enqueue_group``: the real methods (see the module docstring); what
      they would have sent is in :attr:`sent`, in order, and waits for :meth:`run`;
    - :meth:`run`: runs what was recorded through the real task bodies, in this process (needs Redis);
    - ``get_status``: ``PENDING`` (as the real one says of a queued message) until the message has run,
      then read from the result backend exactly as ``MessageQueue.get_status`` reads it;
    - ``queue_stats``: ``pending`` counts the broker messages recorded and not yet run (an envelope is one),
      ``dead_lettered`` is 0 until something has run, then read from the dead-letter store;
    - ``list_dead_letters`` (``[]`` until something has run), ``replay_dead_letter`` (records the message
      again, as the real one would send it) and ``purge_dead_letter``: the real methods on the dead-letter
      store in Redis, which only :meth:`run` fills;
    - ``health_check``: always healthy (the broker is this object).

    It has no Celery ``app``: code that reaches past the producer API to Celery itself gets an
    ``AttributeError`` saying so rather than a message on a real broker.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        # The real __init__ builds a Celery app to send with; this queue sends nothing.
        from config import get_settings

        self.settings = settings or get_settings()
        self._lock = threading.RLock()
        self._run_lock = threading.Lock()
        self._sent: list[SentMessage] = []
        self._unsent: deque[_Send] = deque()
        self._deliveries: list[Delivery] = []
        self._delivered: set[str] = set()
        self._sender_queue: MessageQueue | None = None

    @property
    def app(self) -> Celery:
        raise AttributeError(
            "InMemoryMessageQueue has no Celery app: it records messages instead of sending them; use the "
            "producer API (enqueue, enqueue_many, enqueue_group) and InMemoryMessageQueue.run()"
        )

    # --- what was sent ---------------------------------------------------------------------------------
    @property
    def sent(self) -> list[SentMessage]:
        """Every message recorded so far, in the order it was sent (run or not)."""
        with self._lock:
            return list(self._sent)

    def sent_to(self, queue: str) -> list[SentMessage]:
        """The messages recorded for ``queue``, in order."""
        return [message for message in self.sent if message.queue == queue]

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery :meth:`run` has made so far, in order."""
        with self._lock:
            return list(self._deliveries)

    def clear(self) -> None:
        """Forget what was recorded and not yet run, and the record of what was sent."""
        with self._lock:
            self._sent.clear()
            self._unsent.clear()

    # --- the transport, replaced: record instead of sending -------------------------------------------
    def _publish(self, message: Message, timing: Timing, producer: Any = None, **extra: Any) -> str:
        message_id = message.assign_id()
        self._record([message], _Send("message", [message], timing, time.time()))
        return message_id

    def _send_many(self, queue: Queue, messages: list[Message], timing: Timing, bulk: bool) -> list[str]:
        if not bulk:
            return [self._publish(message, timing) for message in messages]
        ids: list[str] = []
        for envelope, chunk in self.pack_envelopes(queue, messages):
            for position, message in enumerate(chunk):
                message.id = item_id(str(envelope.id), position)
            self._record(
                chunk, _Send("envelope", [envelope], timing, time.time(), len(chunk)), envelope=envelope.id
            )
            ids += [str(message.id) for message in chunk]
        return ids

    def _send_group(self, messages: list[Message]) -> None:
        self._record(messages, _Send("group", messages, Timing(), time.time()), group=str(uuid.uuid4()))

    def _record(
        self, messages: Sequence[Message], send: _Send, envelope: str | None = None, group: str | None = None
    ) -> None:
        timing = send.timing
        records = [
            SentMessage(
                id=str(message.id),
                queue=(message.queue or message.action.queue).value,
                task=message.task,
                payload=json.loads(json.dumps(message.body)),
                priority=message.priority,
                delay_seconds=timing.countdown or 0,
                ttl_seconds=timing.expires,
                envelope=envelope,
                group=group,
            )
            for message in messages
        ]
        with self._lock:
            self._sent += records
            self._unsent.append(send)

    # --- reads: from memory until something ran, then from what the task bodies wrote ------------------
    def get_status(self, message_id: str) -> dict[str, Any]:
        """``PENDING`` until the message (or its envelope) has run; then ``MessageQueue.get_status``."""
        in_envelope = split_item_id(message_id)
        with self._lock:
            ran = message_id in self._delivered or (
                in_envelope is not None and in_envelope[0] in self._delivered
            )
        if ran:
            return self._sender().get_status(message_id)
        # What the real one reports for a message it has no result for: queued, delayed, or unknown.
        return {"id": message_id, "state": "PENDING", "result": None, "error": None, "attempts": 0,
                "task": None, "queue": None, "date_done": None, "dead_letter": None}  # fmt: skip

    def _pending(self, name: str) -> int:
        with self._lock:
            return sum(
                1
                for send in self._unsent
                for message in (send.messages[:1] if send.kind == "envelope" else send.messages)
                if (message.queue or message.action.queue).value == name
            )

    def _dead_lettered(self, name: str) -> int:
        return super()._dead_lettered(name) if self._ran_any() else 0

    def list_dead_letters(
        self, queue: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeadLetterRecord]:
        if not self._ran_any():  # nothing ran, so nothing failed: no need to ask Redis
            if queue is not None:
                resolve_queue(queue)
            return []
        return super().list_dead_letters(queue, limit, offset)

    def health_check(self) -> dict[str, Any]:
        return {"status": "healthy", "broker": "memory://", "latency_ms": 0.0}

    def close(self) -> None:
        """Close what :meth:`run` opened (the connections of the producer it builds its messages with)."""
        with self._lock:
            sender, self._sender_queue = self._sender_queue, None
        if sender is not None:
            sender.close()

    def _ran_any(self) -> bool:
        with self._lock:
            return bool(self._deliveries)

    def _sender(self) -> MessageQueue:
        """A real :class:`MessageQueue` (never connected to a broker): :meth:`run` builds each Celery
        message with its own send code, and statuses are read with its result backend."""
        with self._lock:
            if self._sender_queue is None:
                self._sender_queue = MessageQueue(settings=self.settings)
            return self._sender_queue

    # --- running what was sent ---------------------------------------------------------------------------
    def run(self, app: Celery | None = None, max_messages: int = 10_000) -> list[Delivery]:
        """Run every recorded message not yet run, and every message those runs send, through the real task
        bodies in this process, one at a time, until nothing is left. Returns the deliveries, in order.

        How faithfully: each message is built by the real producer's own send code (``MessageQueue._publish``
        and its envelope and group siblings, so the same headers, ids, priority, eta and expiry), is
        serialized with Celery's JSON serializer (kombu's) as it would be on the wire, and is handed, as a
        kombu message, to Celery's worker ``Request`` (``celery.worker.request.Request.execute``): the class
        a worker builds for every message it receives. So the task runs as on a worker, not eagerly: the
        body gets its arguments decoded from JSON, ``tasks.base.BaseTask`` counts the delivery in Redis,
        retries a transient error by sending a retry message, dead-letters a final failure by sending it to
        ``dead_letter``; results and states are stored in the result backend; a message whose ttl has
        passed since it was enqueued is expired, not run. What a task sends (the follow-ups an execution
        attaches, retries, dead letters, and through ``get_message_queue()`` when this queue is installed,
        anything a task enqueues) is caught before it reaches a broker and run in turn; nothing is
        published. ``Task.apply()`` was not used: it runs eagerly (no JSON, retries inline, results not
        stored, follow-ups and dead letters published to the real broker).

        Not reproduced: priorities do not reorder messages (they run in the order they were sent) and no
        delay or retry countdown is waited for; time limits are not enforced (the pool does that).

        Needs: the worker app, ``app`` (default: Celery's current app, which is ``tasks.app.app`` once that
        has been imported; its task modules are imported here); Redis at ``REDIS_URL`` (delivery counts,
        the result backend, dead letters); and whatever backends the task bodies use (by default the
        embedded storage, search and vector backends under ``DATA_DIR``: a temp directory is fine). No
        broker, and no worker process.

        ``max_messages`` bounds one run (a task that re-sends itself forever): past it, RuntimeError, and
        the messages not run by then are dropped. Raises :class:`BackendUnavailable` when Redis does not
        answer, and RuntimeError when the app is not the workers' (both before anything runs: the
        recorded messages then stay for a later run).
        """
        worker = _worker_app(app)
        self._check_redis()
        sender = self._sender()
        accept = prepare_accept_content(worker.conf.accept_content)  # type: ignore[no-untyped-call]
        wires: deque[_Wire] = deque()
        ran: list[Delivery] = []
        with self._run_lock, _capturing([sender.app, worker], wires):
            self._hand_over(sender, wires)
            while wires:
                if len(ran) >= max_messages:
                    raise RuntimeError(
                        f"InMemoryMessageQueue.run: more than {max_messages} messages ran in one run; "
                        "a task may be sending messages in a loop"
                    )
                delivery = _deliver(worker, wires.popleft(), accept)
                with self._lock:
                    self._deliveries.append(delivery)
                    self._delivered.add(delivery.id)
                ran.append(delivery)
                self._hand_over(sender, wires)
        return ran

    def _check_redis(self) -> None:
        try:
            get_redis().ping()
        except Exception as exc:
            from config import get_settings

            url = redact_url(get_settings().redis_url)  # the task bodies' Redis: the process's settings
            raise BackendUnavailable(
                f"InMemoryMessageQueue.run needs Redis at REDIS_URL ({url}) for delivery counts, results "
                f"and dead letters: {exc}"
            ) from exc

    def _hand_over(self, sender: MessageQueue, wires: deque[_Wire]) -> None:
        """Send what was recorded and not yet run through the real producer (its messages are caught)."""
        while True:
            with self._lock:
                if not self._unsent:
                    return
                send = self._unsent.popleft()
            timing = _remaining(send)
            if send.kind == "message":
                sender._publish(send.messages[0], timing)
            elif send.kind == "envelope":
                sender._publish_envelope(send.messages[0], send.count, timing)
            else:
                sender._send_group(send.messages)


def _remaining(send: _Send) -> Timing:
    """The send's delay and ttl as seconds from now: a message's expiry counts from when it was enqueued."""
    elapsed = time.time() - send.sent_at
    countdown = max(0.0, (send.timing.countdown or 0) - elapsed)
    expires = None if send.timing.expires is None else send.timing.expires - elapsed
    return Timing(countdown=countdown or None, expires=expires)


def _worker_app(app: Celery | None) -> Celery:
    """The app whose tasks run, with its task modules imported: ``app``, else this process's current Celery
    app (Celery's own notion of "the app", which ``shared_task`` uses; the worker app ``tasks.app`` once it
    has been imported). The fabric names no worker module: the worker layer sits above it.

    Raises RuntimeError for an app not configured as the workers are (:mod:`fabric.celery_config`: its
    routes) or without the queues' tasks: Celery's default app, say, when no worker module was imported."""
    worker = app if app is not None else current_app._get_current_object()
    worker.loader.import_default_modules()
    routes = worker.conf.task_routes
    routed = isinstance(routes, Mapping) and all(f"{queue}.*" in routes for queue in QUEUES)
    if not routed or not {action.task for action in known_actions()} & set(worker.tasks):
        raise RuntimeError(
            f"InMemoryMessageQueue.run: the Celery app {worker.main!r} is not the workers' (configured by "
            "fabric.celery_config, with the queues' tasks); pass the worker app (run(app)), or import it "
            "first (it is then Celery's current app)"
        )
    return worker


#: send_task_message's own parameters; whatever else it is given are message properties (priority ...).
_NOT_PROPERTIES = frozenset(
    {"event_dispatcher", "retry", "retry_policy", "delivery_mode", "compression", "exchange_type",
     "timeout", "confirm_timeout"}
)  # fmt: skip


@contextlib.contextmanager
def _capturing(apps: Sequence[Celery], wires: deque[_Wire]) -> Iterator[None]:
    """While inside, every task message the ``apps`` send lands in ``wires`` instead of on the broker.

    Celery builds the message (``create_task_message``) and routes it as always; only its last step,
    ``app.amqp.send_task_message`` (which publishes), is replaced, per app instance. The process also says
    what a worker process says: a task's ``AsyncResult.get()`` would block (so result backends subscribe
    to nothing for the messages sent meanwhile)."""
    saved: list[tuple[Any, Any]] = []
    blocked = task_join_will_block()
    try:
        for app in apps:
            amqp = app.amqp
            saved.append((amqp, vars(amqp).get("send_task_message")))
            catcher = _catcher(app, wires)
            vars(amqp)["send_task_message"] = catcher
            if amqp.send_task_message is not catcher:  # a Celery whose AMQP no longer reads it from there
                raise RuntimeError(
                    "could not catch Celery's send_task_message: nothing would be kept off the broker"
                )
        _set_task_join_will_block(True)
        yield
    finally:
        _set_task_join_will_block(blocked)
        for amqp, previous in saved:
            if previous is None:
                vars(amqp).pop("send_task_message", None)
            else:
                vars(amqp)["send_task_message"] = previous


def _catcher(app: Celery, wires: deque[_Wire]) -> Callable[..., None]:
    def send_task_message(
        producer: Any, name: str, message: Any, exchange: str | None = None, routing_key: str | None = None,
        queue: Any = None, serializer: str | None = None, headers: dict[str, Any] | None = None,
        declare: Any = None, **options: Any,
    ) -> None:  # fmt: skip
        # What Celery's own send_task_message does before it publishes: merge the headers and properties,
        # resolve the queue, tell the before/after_task_publish handlers.
        message_headers, properties, body, _ = message
        message_headers.update(headers or {})
        properties.update({k: v for k, v in options.items() if k not in _NOT_PROPERTIES})
        if queue is None and exchange is None:
            queue = app.amqp.default_queue
        if queue is None:  # sent to an exchange by routing key: the queue bound to it is the key's
            queue_name = str(routing_key or "")
        else:
            queue_name = queue if isinstance(queue, str) else str(queue.name)
        routing_key = routing_key or queue_name
        signals.before_task_publish.send(
            sender=name, body=body, exchange=exchange or "", routing_key=routing_key, declare=declare or [],
            headers=message_headers, properties=properties, retry_policy=options.get("retry_policy"),
        )  # fmt: skip
        content_type, content_encoding, data = _serialized(body, serializer or app.conf.task_serializer)
        wires.append(
            _Wire(name, queue_name, exchange or "", message_headers, properties, content_type,
                  content_encoding, data)
        )  # fmt: skip
        signals.after_task_publish.send(
            sender=name, body=body, headers=message_headers, exchange=exchange or "", routing_key=routing_key
        )

    return send_task_message


def _deliver(app: Celery, wire: _Wire, accept: Any) -> Delivery:
    """Run one caught message as a worker would: a kombu message handed to Celery's worker ``Request``."""
    headers = wire.headers
    delivery = Delivery(
        id=str(headers.get("id")), task=wire.task, queue=wire.queue, state="REJECTED",
        parent_id=headers.get("parent_id"), retries=int(headers.get("retries") or 0),
    )  # fmt: skip
    task = app.tasks.get(wire.task)
    if task is None:  # a worker logs and discards a message of a task it does not know
        missing = {"type": "NotRegistered", "message": f"no task {wire.task!r} in the worker app"}
        return replace(delivery, error=missing)
    message = KombuMessage(  # type: ignore[no-untyped-call]  # kombu's Message has no hints
        body=wire.body, content_type=wire.content_type, content_encoding=wire.content_encoding,
        headers=headers, properties=wire.properties, accept=accept,
        delivery_info={"exchange": wire.exchange, "routing_key": wire.queue, "redelivered": False},
    )  # fmt: skip
    try:
        request = Request(message, app=app, task=task, hostname=HOSTNAME)
    except (ContentDisallowed, DecodeError, InvalidTaskError) as exc:  # a worker rejects these unrun
        return replace(delivery, error=_described(exc))
    delivery = replace(delivery, args=list(request.args), kwargs=dict(request.kwargs))
    if request.revoked():  # its ttl passed: marked expired in the result backend, never run
        return replace(delivery, state="EXPIRED")
    returned = request.execute()
    if not isinstance(returned, ExceptionInfo):
        return replace(
            delivery, state="SUCCESS", result=_json_round_trip(returned, app.conf.result_serializer)
        )
    raised = returned.exception
    # Celery's tracer may wrap it to carry its traceback (Task.apply unwraps it the same way).
    return _raised(delivery, raised.exc if isinstance(raised, ExceptionWithTraceback) else raised)


def _raised(delivery: Delivery, raised: BaseException) -> Delivery:
    """How a delivery whose task raised ``raised`` ended, as the worker's tracer classifies it."""
    if isinstance(raised, Retry):
        cause = raised.exc if isinstance(raised.exc, BaseException) else raised
        return replace(delivery, state="RETRY", error=_described(cause))
    if isinstance(raised, Ignore):
        return replace(delivery, state="IGNORED")
    return replace(
        delivery, state="REJECTED" if isinstance(raised, Reject) else "FAILURE", error=_described(raised)
    )


def _described(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def _serialized(value: Any, serializer: str) -> tuple[str, str, bytes | str]:
    """``value`` as kombu (so Celery) serializes it: content type, encoding, data."""
    content_type, content_encoding, data = dumps(value, serializer=serializer)  # type: ignore[no-untyped-call]
    return str(content_type), str(content_encoding), data


def _json_round_trip(value: Any, serializer: str) -> Any:
    """``value`` after the round trip the result backend gives it."""
    content_type, content_encoding, data = _serialized(value, serializer)
    return loads(data, content_type, content_encoding, accept=_ACCEPT_JSON)  # type: ignore[no-untyped-call]


_ACCEPT_JSON = prepare_accept_content(["json"])  # type: ignore[no-untyped-call]


Q = TypeVar("Q", bound=MessageQueue)


@contextlib.contextmanager
def installed(queue: Q) -> Iterator[Q]:
    """``with installed(InMemoryMessageQueue()) as queue:``: ``get_message_queue()`` returns ``queue`` inside
    the block, in this process (through :meth:`fabric.registry.PerProcess.override`), and builds the real one
    again on its next use after it. A real queue this process had built is closed when the block starts."""
    replacement: MessageQueue = queue
    with overridden(producer._queue, replacement):
        yield queue
