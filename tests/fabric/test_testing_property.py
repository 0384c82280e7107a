"""The double accepts and refuses exactly what the real producer does (property-based).

For generated calls over every queue (valid payloads, near-valid ones, values that are not JSON, wrong types,
extra fields, bad priorities, delays and ttls), the real :class:`MessageQueue` sends to the session's Redis
broker and :class:`InMemoryMessageQueue` records; both must refuse the same calls with the same error, and
for the calls they accept, what the double recorded must be what the real one published (task, queue,
payload, priority, eta, expiry, envelopes and their ids), as read from Celery's ``before_task_publish``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import signals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import Settings
from config.queues import WORK_QUEUES, Queue
from fabric.envelopes import unpack_items
from fabric.producer import MessageQueue
from fabric.testing import InMemoryMessageQueue, SentMessage
from tests.support.servers import RedisServer

ENVELOPE_SIZE = 2  # small, so that a few payloads already fill several envelopes
LIMITS = Settings(bulk_envelope_size=ENVELOPE_SIZE)

PROPERTY = settings(
    max_examples=120,
    deadline=None,  # the real side talks to Redis: no per-example time limit, no flaky deadline
    database=None,  # nothing written into the working tree
    # The session's function-scoped autouse fixtures reset clients after the test, not per example: fine here.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies: each dimension mostly valid, so that accepted and refused calls are both common -----------


def mostly(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about nine times in ten, ``wrong`` otherwise (one_of alone would not weigh them)."""
    return st.integers(0, 9).flatmap(lambda n: wrong if n == 9 else valid)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
not_json = st.sampled_from(
    [
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.date(2026, 1, 1), {1, 2}, frozenset({"a"}), (1, 2), b"raw",
        float("nan"), float("inf"), decimal.Decimal("1.5"), complex(1, 2), object(), {1: "int key"},
    ]
)  # fmt: skip
ids = mostly(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(str.strip),
    st.sampled_from(["", " ", "\t", "x" * 257, 7]),
)
timestamps = mostly(
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T10:30:00+02:00", "2026-01-01"]),
    st.sampled_from(["yesterday", "", 1.5e9, None]),
)
statuses = mostly(
    st.sampled_from(["pending", "running", "completed", "failed", "cancelled"]), st.sampled_from(["done", ""])
)
levels = mostly(st.sampled_from(["info", "ERROR", "debug "]), st.sampled_from([" ", ""]))
names = mostly(st.text(min_size=1, max_size=10), st.just(""))


def with_optional(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)


workflows = with_optional(
    {"id": ids, "name": names},
    {
        "description": mostly(st.text(max_size=10), st.integers()),
        "tags": st.lists(st.text(max_size=5), max_size=3),
        "category": st.text(max_size=5),
        "created_at": timestamps,
        "definition": st.dictionaries(st.text(max_size=5), json_values, max_size=2),
        "owner": json_values,  # documents keep extra fields
    },
)
log_entries = with_optional(
    {"timestamp": timestamps, "level": levels, "message": st.text(max_size=10)},
    {"id": ids, "service": st.text(max_size=5), "execution_id": ids},
)
executions = with_optional(
    {"id": ids, "workflow_id": ids, "status": statuses},
    {
        "started_at": timestamps,
        "error_message": st.text(max_size=5) | st.none(),
        "input_data": mostly(st.dictionaries(st.text(max_size=5), json_values, max_size=2), st.just([])),
        "logs": st.lists(log_entries, max_size=2),
    },
)

VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "workflow_execution": with_optional(
        {"workflow_id": ids},
        {
            "input_data": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            "priority": mostly(st.integers(0, 9), st.sampled_from([-1, 10, True, 2.5, "5"])),
            "execution_id": ids,
            "action": mostly(st.just("execute"), st.just("run")),
        },
    ),
    "indexing_tasks": st.one_of(
        st.fixed_dictionaries({"action": st.just("index_workflow"), "workflow": workflows}),
        st.fixed_dictionaries({"action": st.just("index_execution"), "execution": executions}),
        st.fixed_dictionaries({"action": st.just("index_log"), "entry": log_entries}),
    ),
    "vector_tasks": st.fixed_dictionaries({"action": st.just("embed_workflow"), "workflow": workflows}),
    "analytics_tasks": st.fixed_dictionaries(
        {"action": st.just("update_workflow_stats"), "workflow_id": ids, "execution": executions}
    ),
}
CHANGES = ["none"] * 14 + [
    "drop",
    "extra",
    "not_json",
    "nested_not_json",
    "wrong_type",
    "action",
    "not_a_mapping",
]


@st.composite
def payloads(draw: st.DrawFn, queue: str) -> object:
    """A payload for ``queue`` (any queue's for a queue that does not exist), valid or made slightly wrong."""
    base = dict(draw(VALID.get(queue, VALID["indexing_tasks"])))
    change = draw(st.sampled_from(CHANGES))
    keys = sorted(base)
    if change == "drop" and keys:
        del base[draw(st.sampled_from(keys))]
    elif change == "extra":
        base[draw(st.sampled_from(["surprise", "payload", "id"]))] = draw(json_values)
    elif change == "not_json" and keys:
        base[draw(st.sampled_from(keys))] = draw(not_json)
    elif change == "nested_not_json":
        nested = [k for k in keys if isinstance(base[k], dict) and base[k]]
        if nested:
            key = draw(st.sampled_from(nested))
            inner = dict(base[key])
            inner[draw(st.sampled_from(sorted(inner)))] = draw(not_json)
            base[key] = inner
    elif change == "wrong_type" and keys:
        base[draw(st.sampled_from(keys))] = draw(
            st.integers() | st.lists(st.integers(), max_size=2) | st.text(max_size=3)
        )
    elif change == "action":
        base["action"] = draw(st.text(max_size=8) | st.integers() | st.none())
    elif change == "not_a_mapping":
        return draw(st.lists(json_values, max_size=2) | st.text(max_size=5) | st.none() | st.integers())
    return base


queue_names = mostly(
    st.sampled_from([*(q.value for q in WORK_QUEUES), Queue.INDEXING]),
    st.sampled_from(["dead_letter", "no_such_queue", "", None, 3]),
)
priorities = mostly(
    st.none() | st.integers(0, 9) | st.sampled_from([0, 9]),
    st.sampled_from([-1, 10, True, 2.5, float("nan"), "3"]),
)
delays = mostly(
    st.just(0) | st.integers(0, 3600) | st.floats(0, 3600) | st.just(1e-9),
    st.sampled_from([-1, -0.5, 3601, 3600.5, float("nan"), float("inf"), None, "5"]),
)
ttls = mostly(
    st.none() | st.integers(3601, 7 * 24 * 3600) | st.floats(3601, 7 * 24 * 3600),
    st.sampled_from([0, 0.5, 1, 60, 7 * 24 * 3600 + 1, float("nan"), float("inf"), "60", -5]),
)
message_ids = st.none() | st.sampled_from(["given-id-1", "", "a.1"])


# --- what each side did -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(redis_server: RedisServer) -> Iterator[MessageQueue]:
    """The real producer on the session's Redis broker (module-scoped: hypothesis runs many examples in one
    test). What it sent is removed after the module."""
    mq = MessageQueue(settings=LIMITS)
    yield mq
    mq.close()
    client: redis.Redis = redis_server.client()
    for queue in WORK_QUEUES:
        for key in client.scan_iter(f"{queue.value}*"):
            client.delete(key)
    client.close()


class Published:
    """The task messages this process publishes, as Celery hands them to the broker (its
    ``before_task_publish`` signal); :meth:`take` returns those since the last call."""

    def __init__(self) -> None:
        self._seen: list[dict[str, Any]] = []

    def __call__(self, sender: str, body: Any, headers: dict[str, Any], routing_key: str, **_: Any) -> None:
        self._seen.append({"task": sender, "kwargs": body[1], "headers": dict(headers), "queue": routing_key})

    def take(self) -> list[dict[str, Any]]:
        taken, self._seen = self._seen, []
        return taken

    def __repr__(self) -> str:  # hypothesis prints the test's arguments with a failing example
        return f"<Published: {len(self._seen)} not taken>"


@pytest.fixture(scope="module")
def published() -> Iterator[Published]:
    seen = Published()
    signals.before_task_publish.connect(seen, weak=False)
    yield seen
    signals.before_task_publish.disconnect(seen)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """``("sent", ids)`` or ``("refused", "<error type>: <message>")``: any exception counts."""
    try:
        return "sent", call()
    except Exception as exc:  # the point is to compare whatever either side raises
        return "refused", f"{type(exc).__name__}: {exc}"


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalised(value: Any) -> Any:
    """``value`` with every generated UUID replaced by the order it first appears in (ids differ per side)."""
    text = json.dumps(value, sort_keys=True)
    seen: dict[str, str] = {}
    return json.loads(UUID.sub(lambda m: seen.setdefault(m.group(0), f"<uuid{len(seen)}>"), text))


def as_published(sent: list[SentMessage]) -> list[dict[str, Any]]:
    """What the real producer publishes for the recorded messages: envelopes packed, one message otherwise."""
    out: list[dict[str, Any]] = []
    for message in sent:
        shaped = {
            "id": message.envelope or message.id, "queue": message.queue, "priority": message.priority,
            "delayed": message.delay_seconds > 0, "expires": message.ttl_seconds is not None,
        }  # fmt: skip
        if message.envelope is None:
            out.append({**shaped, "task": message.task, "payload": message.payload})
            continue
        item = {"action": message.task.split(".", 1)[1], "payload": message.payload}
        if out and out[-1]["id"] == message.envelope:
            out[-1]["items"].append(item)
        else:
            out.append({**shaped, "task": f"{message.queue}.bulk", "items": [item]})
    return out


def from_broker(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        headers, kwargs = message["headers"], message["kwargs"]
        shaped: dict[str, Any] = {
            "id": headers["id"], "task": message["task"], "queue": message["queue"],
            "priority": headers["wft_priority"], "delayed": headers["eta"] is not None,
            "expires": headers["expires"] is not None,
        }  # fmt: skip
        if "packed_items" in kwargs:
            shaped["items"] = unpack_items(kwargs["packed_items"])
        else:
            shaped["payload"] = kwargs["payload"]
        out.append(shaped)
    return out


def behaves_the_same(real: MessageQueue, published: Published, call: Callable[[MessageQueue], Any]) -> None:
    """``call`` on the real queue and on a fresh double: the same refusal, or the same messages."""
    published.take()
    real_did = outcome(lambda: call(real))
    real_sent = published.take()
    double = InMemoryMessageQueue(settings=LIMITS)
    double_did = outcome(lambda: call(double))
    assert published.take() == [], "the double published to a broker"
    assert double_did[0] == real_did[0], f"real: {real_did}, double: {double_did}"
    if real_did[0] == "refused":
        assert double_did[1] == real_did[1]
        assert real_sent == [] and double.sent == []
        return
    # The same ids (each side's UUIDs aside; E.i included) for the same messages.
    assert normalised({"ids": double_did[1], "messages": as_published(double.sent)}) == normalised(
        {"ids": real_did[1], "messages": from_broker(real_sent)}
    )


def queue_of(name: object) -> str:
    return name.value if isinstance(name, Queue) else str(name)


# --- the properties ------------------------------------------------------------------------------------
@st.composite
def enqueue_calls(draw: st.DrawFn) -> tuple[Any, ...]:
    queue = draw(queue_names)
    return (
        queue,
        draw(payloads(queue_of(queue))),
        draw(priorities),
        draw(delays),
        draw(ttls),
        draw(message_ids),
    )


@PROPERTY
@given(call=enqueue_calls())
def test_enqueue_accepts_and_refuses_as_the_real_one(
    real: MessageQueue, published: Published, call: tuple[Any, ...]
) -> None:
    queue, payload, priority, delay, ttl, message_id = call
    behaves_the_same(
        real, published,
        lambda mq: mq.enqueue(queue, payload, priority=priority, delay_seconds=delay, ttl_seconds=ttl,
                              message_id=message_id),
    )  # fmt: skip


@PROPERTY
@given(data=st.data())
def test_enqueue_many_accepts_and_refuses_as_the_real_one(
    real: MessageQueue, published: Published, data: st.DataObject
) -> None:
    queue = data.draw(queue_names, label="queue")
    batch = data.draw(
        st.lists(payloads(queue_of(queue)), max_size=5)
        | st.sampled_from([{"action": "x"}, "not a list", None]),
        label="payloads",
    )
    priority, delay, ttl = data.draw(priorities), data.draw(delays), data.draw(ttls)
    behaves_the_same(
        real, published,
        lambda mq: mq.enqueue_many(queue, batch, priority=priority, delay_seconds=delay, ttl_seconds=ttl),
    )  # fmt: skip


@PROPERTY
@given(data=st.data())
def test_enqueue_group_accepts_and_refuses_as_the_real_one(
    real: MessageQueue, published: Published, data: st.DataObject
) -> None:
    queues = data.draw(st.lists(queue_names, max_size=4), label="queues")
    messages = [(q, data.draw(payloads(queue_of(q)), label=f"payload {i}")) for i, q in enumerate(queues)]
    behaves_the_same(real, published, lambda mq: mq.enqueue_group(messages))


def test_the_generated_calls_include_accepted_and_refused_ones(
    real: MessageQueue, published: Published
) -> None:
    """The properties above are only as good as their examples: both outcomes must be common."""
    seen: dict[str, int] = {"sent": 0, "refused": 0}

    @settings(max_examples=200, deadline=None, database=None)
    @given(data=st.data())
    def count(data: st.DataObject) -> None:
        queue = data.draw(queue_names)
        payload = data.draw(payloads(queue_of(queue)))
        kind, _ = outcome(lambda: InMemoryMessageQueue(settings=LIMITS).enqueue(
            queue, payload, priority=data.draw(priorities), delay_seconds=data.draw(delays),
            ttl_seconds=data.draw(ttls)))  # fmt: skip
        seen[kind] += 1

    count()
    assert seen["sent"] >= 50 and seen["refused"] >= 50, seen
