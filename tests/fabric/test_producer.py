"""The producer API without workers: validation at the edge, and nothing enqueued when it fails."""

from __future__ import annotations

import base64
import datetime as dt
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from config.queues import WORK_QUEUES
from fabric import sent_events
from fabric.errors import InvalidInput
from fabric.producer import MessageQueue
from tests.support.roundtrips import RoundTrips
from tests.support.workers import REPO_ROOT

GOOD = {
    "workflow_execution": {"workflow_id": "wf-1", "input_data": {"a": 1}, "priority": 5},
    "indexing_tasks": {"action": "index_workflow", "workflow": {"id": "wf-1", "name": "Invoices"}},
    "vector_tasks": {"action": "embed_workflow", "workflow": {"id": "wf-1", "name": "Invoices"}},
    "analytics_tasks": {
        "action": "update_workflow_stats",
        "workflow_id": "wf-1",
        "execution": {"id": "ex-1", "workflow_id": "wf-1", "status": "completed"},
    },
}


def depths(mq: MessageQueue) -> dict[str, int]:
    return {q.value: mq.queue_stats(q.value)["pending"] for q in WORK_QUEUES}


@pytest.mark.parametrize(
    ("queue", "payload", "expected"),
    [
        ("no_such_queue", {"workflow_id": "x"}, "unknown queue 'no_such_queue'"),
        ("dead_letter", {"workflow_id": "x"}, "takes no new messages"),
        ("workflow_execution", {"input_data": {}}, "payload.workflow_id: Field required"),
        ("indexing_tasks", {"workflow": {"id": "w", "name": "n"}}, "payload.action is required"),
        (
            "indexing_tasks",
            {"action": "drop_index"},
            "unknown action 'drop_index' for queue 'indexing_tasks'",
        ),
        ("indexing_tasks", {"action": "index_workflow", "workflow": {"id": "w"}}, "payload.workflow.name"),
        (
            "indexing_tasks",
            {
                "action": "index_and_count_execution",
                "execution": {"id": "e", "workflow_id": "w", "status": "running"},
            },
            "payload.execution: Value error, status is 'running': only a finished execution",
        ),
        (
            "workflow_execution",
            {"workflow_id": "x", "input_data": {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}},
            "payload.input_data.when: a datetime is not JSON; send an ISO 8601 string",
        ),
        (
            "workflow_execution",
            {"workflow_id": "x", "input_data": {"s": {1, 2}}},
            "payload.input_data.s: a set",
        ),
        ("workflow_execution", {"workflow_id": "x", "input_data": {"n": float("nan")}}, "not valid JSON"),
        ("workflow_execution", {"workflow_id": "x", "input_data": {1: "a"}}, "JSON object keys are strings"),
        ("workflow_execution", {"workflow_id": "x", "surprise": 1}, "payload.surprise: Extra inputs"),
        ("workflow_execution", ["not", "a", "dict"], "payload must be a JSON object"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_enqueued(mq: MessageQueue, queue, payload, expected) -> None:
    before = depths(mq)
    with pytest.raises(InvalidInput) as err:
        mq.enqueue(queue, payload)
    assert expected in str(err.value)
    assert depths(mq) == before


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"priority": 10}, "priority must be a whole number from 0 to 9"),
        ({"priority": -1}, "priority must be"),
        ({"priority": 2.5}, "priority must be"),
        ({"delay_seconds": -1}, "delay_seconds must be"),
        ({"delay_seconds": 10**9}, "delay_seconds must be"),
        ({"ttl_seconds": 0}, "ttl_seconds must be"),
        ({"delay_seconds": 10, "ttl_seconds": 5}, "must be longer than delay_seconds"),
    ],
)
def test_bad_options_are_refused(mq: MessageQueue, kwargs, expected) -> None:
    before = depths(mq)
    with pytest.raises(InvalidInput, match=expected):
        mq.enqueue("workflow_execution", {"workflow_id": "wf-1"}, **kwargs)
    assert depths(mq) == before


@pytest.mark.parametrize("queue", sorted(GOOD))
def test_valid_payload_is_enqueued_on_its_queue(mq: MessageQueue, queue: str) -> None:
    before = depths(mq)
    message_id = mq.enqueue(queue, GOOD[queue])
    after = depths(mq)
    assert after[queue] == before[queue] + 1
    assert sum(after.values()) == sum(before.values()) + 1
    status = mq.get_status(message_id)
    assert status["state"] == "PENDING"
    assert status["attempts"] == 0


def test_message_carries_json_and_task_name_only(mq: MessageQueue, redis_client: redis.Redis) -> None:
    mq.enqueue("workflow_execution", GOOD["workflow_execution"])
    raw = [redis_client.lrange(k, 0, -1) for k in redis_client.scan_iter("workflow_execution*")]
    bodies = [item for chunk in raw for item in chunk]
    assert len(bodies) == 1
    import json

    message = json.loads(bodies[0])
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == "workflow_execution.execute"


def test_health_check_reports_broker(mq: MessageQueue) -> None:
    health = mq.health_check()
    assert health["status"] == "healthy"
    assert "latency_ms" in health


def test_health_check_unhealthy_when_broker_is_down(tmp_path) -> None:
    from config.settings import Settings
    from tests.support.servers import free_port

    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    queue = MessageQueue(settings=settings)
    health = queue.health_check()
    queue.close()
    assert health["status"] == "unhealthy"
    assert health["error"]


def test_queue_stats_unknown_queue(mq: MessageQueue) -> None:
    with pytest.raises(InvalidInput, match="unknown queue"):
        mq.queue_stats("nope")


LOG_ENTRY = {"timestamp": "2024-05-01T12:00:00Z", "level": "INFO", "message": "m"}


def test_enqueue_many_to_a_dead_broker_names_it_and_says_resending_is_safe() -> None:
    # Envelopes only: a canvas (workflow executions) fails first in Celery's result subscription, with
    # a RuntimeError after its reconnect retries (noted for follow-up).
    from config.settings import Settings
    from fabric.errors import BackendUnavailable
    from tests.support.servers import free_port

    port = free_port()
    mq = MessageQueue(settings=Settings(redis_url=f"redis://:s3cret@127.0.0.1:{port}/0"))
    try:
        with pytest.raises(
            BackendUnavailable, match=re.escape(f"broker at redis://:***@127.0.0.1:{port}/0 is unreachable")
        ) as err:
            mq.enqueue_many("indexing_tasks", [{"action": "index_log", "entry": LOG_ENTRY}])
    finally:
        mq.close()
    assert "s3cret" not in str(err.value)
    assert "sending the call again is safe" in str(err.value)


@pytest.mark.parametrize("send", ["enqueue", "enqueue_many"])
def test_every_send_path_checks_options_the_same_way(mq: MessageQueue, send: str) -> None:
    before = depths(mq)
    call = (
        (lambda **kw: mq.enqueue("workflow_execution", {"workflow_id": "wf-1"}, **kw))
        if send == "enqueue"
        else (lambda **kw: mq.enqueue_many("workflow_execution", [{"workflow_id": "wf-1"}], **kw))
    )
    with pytest.raises(InvalidInput, match="must be longer than delay_seconds"):
        call(delay_seconds=10, ttl_seconds=5)
    with pytest.raises(InvalidInput, match="priority must be"):
        call(priority=10)
    assert depths(mq) == before


@pytest.mark.parametrize("send", ["enqueue", "enqueue_many"])
def test_every_send_path_takes_the_payloads_own_priority(
    mq: MessageQueue, redis_client: redis.Redis, send: str
) -> None:
    payload = {"workflow_id": "wf", "priority": 9}
    if send == "enqueue":
        mq.enqueue("workflow_execution", payload)
    else:
        mq.enqueue_many("workflow_execution", [payload])
    # Priority 9 (ours, highest) is kombu's level 0 on Redis: the list named like the queue.
    assert redis_client.llen("workflow_execution") == 1
    assert redis_client.llen("workflow_execution\x06\x169") == 0


def _sent_events(pubsub: redis.client.PubSub, ids: list[str], timeout: float = 5) -> list[dict[str, object]]:
    """The events published for the messages ``ids``, in the order they arrived, once all have (each
    message on the event exchange may be a ``task.multi`` holding several). Events of other messages are
    left out: other producers of the session's Redis may flush theirs meanwhile."""
    wanted, found = set(ids), []
    deadline = time.monotonic() + timeout
    while {e["uuid"] for e in found} != wanted:
        remaining = deadline - time.monotonic()
        published = pubsub.get_message(timeout=max(remaining, 0.01)) if remaining > 0 else None
        if published is None:
            missing = wanted - {e["uuid"] for e in found}
            raise AssertionError(f"no event for {sorted(missing)} within {timeout} s")
        envelope = json.loads(published["data"])
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        found += [e for e in (decoded if isinstance(decoded, list) else [decoded]) if e.get("uuid") in wanted]
    return found


def test_enqueue_sends_one_message_and_its_sent_event_follows_in_a_batch(
    mq: MessageQueue, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=2) is not None  # the subscription's confirmation
    first = mq.enqueue("indexing_tasks", GOOD["indexing_tasks"])  # connects and declares once
    assert [e["type"] for e in _sent_events(events, [first])] == ["task-sent"]
    trips = RoundTrips(monkeypatch)
    ids = [mq.enqueue("indexing_tasks", GOOD["indexing_tasks"]) for _ in range(5)]
    assert trips.count == 5  # one LPUSH each: the sent events go from the buffer's thread
    monkeypatch.undo()
    sent = _sent_events(events, ids)
    events.close()
    # Flower sees every message as sent, with the fields Celery gives the event, in the order sent.
    assert [e["uuid"] for e in sent] == ids
    assert {(e["type"], e["queue"], e["name"]) for e in sent} == {
        ("task-sent", "indexing_tasks", "indexing_tasks.index_workflow")
    }
    clocks = [int(str(e["clock"])) for e in sent]
    assert clocks == sorted(clocks)
    assert depths(mq)["indexing_tasks"] == 6


def test_close_and_exit_send_the_sent_events_still_kept(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=2) is not None
    monkeypatch.setattr(sent_events, "SENT_EVENT_DELAY", 60.0)  # the thread would not send within the test
    producer = MessageQueue()
    message_id = producer.enqueue("indexing_tasks", GOOD["indexing_tasks"])
    producer.close()
    assert [e["uuid"] for e in _sent_events(events, [message_id])] == [message_id]
    # A script that enqueues and exits without closing anything: its event is sent at exit.
    script = (
        "import sys; from fabric import sent_events; sent_events.SENT_EVENT_DELAY = 60.0\n"
        "from fabric.producer import get_message_queue\n"
        "print(get_message_queue().enqueue('indexing_tasks', {'action': 'index_workflow', "
        "'workflow': {'id': 'wf-1', 'name': 'Invoices'}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(_sent_events(events, [done.stdout.strip()])) == 1
    events.close()


def _send_from_forked_child(mq: MessageQueue, result: Any) -> None:
    message_id = mq.enqueue("indexing_tasks", GOOD["indexing_tasks"])
    sent_events.send_all_kept()  # what a worker process does when it stops
    result.put((message_id, os.getpid()))


def test_a_forked_child_sends_its_own_sent_events(mq: MessageQueue, redis_client: redis.Redis) -> None:
    # A prefork pool process inherits its parent's producer: its events carry its own pid, and neither
    # process blocks on a lock or a thread the other holds.
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=2) is not None
    parent_id = mq.enqueue("indexing_tasks", GOOD["indexing_tasks"])  # the parent's thread is running
    assert len(_sent_events(events, [parent_id])) == 1
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_send_from_forked_child, args=(mq, result))
    child.start()
    child_id, child_pid = result.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    (event,) = _sent_events(events, [child_id])
    assert event["pid"] == child_pid
    assert child_pid != os.getpid()
    again = mq.enqueue("indexing_tasks", GOOD["indexing_tasks"])
    (event,) = _sent_events(events, [again])
    assert event["pid"] == os.getpid()
    events.close()
