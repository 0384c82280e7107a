"""The result backend's one-round-trip writes, against the session's real Redis: what Celery's own Redis
backend guarantees (a stored SUCCESS is never overwritten, every state is published to waiters, results
expire) holds, and the STARTED state the base task writes with its delivery count is Celery's own meta."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from celery import group, states
from celery.app.task import Context

from config import get_settings
from fabric import deliveries
from fabric.result_backend import RedisResultBackend, count_and_store
from fabric.starts import DeliveryCount
from tests.fabric.conftest import configured_app
from tests.support.roundtrips import RoundTrips


def _stored(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, f"nothing stored for {task_id}"
    return dict(json.loads(raw))


def test_the_worker_backend_stores_a_state_in_one_round_trip(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = configured_app()
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    backend.store_result("t-0", {"warm": 1}, states.SUCCESS)  # loads the script once
    trips = RoundTrips(monkeypatch)
    backend.store_result("t-1", {"ok": 1}, states.SUCCESS)
    assert trips.count == 1  # Celery's own backend: a GET, then a pipelined SETEX and PUBLISH
    meta = _stored(redis_client, "t-1")
    assert meta["status"] == "SUCCESS" and meta["result"] == {"ok": 1} and meta["task_id"] == "t-1"
    assert 0 < redis_client.ttl("celery-task-meta-t-1") <= get_settings().result_expires
    app.close()


def test_a_stored_success_is_never_overwritten(redis_client: redis.Redis) -> None:
    app = configured_app()
    app.backend.store_result("t-2", {"first": True}, states.SUCCESS)
    app.backend.store_result("t-2", None, states.STARTED)
    app.backend.store_result("t-2", ValueError("late failure"), states.FAILURE)
    assert _stored(redis_client, "t-2")["result"] == {"first": True}
    assert app.AsyncResult("t-2").state == states.SUCCESS
    app.close()


def test_every_state_is_published_to_the_keys_channel(redis_client: redis.Redis) -> None:
    app = configured_app()
    pubsub = redis_client.pubsub()
    pubsub.subscribe("celery-task-meta-t-3")
    pubsub.get_message(timeout=2)  # the subscription confirmation
    app.backend.store_result("t-3", 42, states.SUCCESS)
    message = pubsub.get_message(timeout=5)
    assert message is not None and json.loads(message["data"])["result"] == 42
    pubsub.close()
    app.close()


def test_a_waiting_async_result_wakes_up(redis_client: redis.Redis) -> None:
    app = configured_app()
    result = app.AsyncResult("t-4")
    timer = threading.Timer(0.3, lambda: app.backend.store_result("t-4", "done", states.SUCCESS))
    timer.start()
    assert result.get(timeout=10) == "done"
    timer.join()
    app.close()


def test_sending_a_task_subscribes_to_nothing(redis_client: redis.Redis) -> None:
    # Workers send follow-ups and producers send messages; neither waits on their results, so neither
    # holds a result subscription (Celery's own backend subscribes for every task sent).
    app = configured_app()
    result = app.send_task("testing.nobody-runs-this", queue="analytics_tasks")
    members = group(app.signature("testing.nobody-runs-this", queue="analytics_tasks") for _ in range(3))
    sent = members.apply_async()  # as a worker sends an execution's follow-ups
    assert len(sent.results) == 3
    assert redis_client.pubsub_channels("celery-task-meta-*") == []
    timer = threading.Timer(0.3, lambda: app.backend.store_result(result.id, "late", states.SUCCESS))
    timer.start()
    assert result.get(timeout=10) == "late"  # one that does wait subscribes then
    timer.join()
    app.close()


def test_failures_are_stored_with_their_exception(redis_client: redis.Redis) -> None:
    app = configured_app()
    app.backend.mark_as_failure("t-5", ValueError("bad field 'x'"))
    meta = _stored(redis_client, "t-5")
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ValueError" and "bad field" in str(meta["result"]["exc_message"])
    app.close()


def test_started_with_the_delivery_count_is_one_script_and_celerys_own_meta(
    redis_client: redis.Redis,
) -> None:
    app = configured_app()
    backend = app.backend
    request = Context(id="t-6", task="analytics_tasks.noop", args=[], kwargs={"x": 1}, retries=0,
                      hostname="w1@host", delivery_info={"routing_key": "analytics_tasks"})  # fmt: skip
    meta = backend.meta_for("t-6", {"pid": 7, "hostname": "w1@host"}, states.STARTED, request=request)
    key = "celery-task-meta-t-6"
    first = deliveries.count_delivery_and_start(redis_client, "t-6", 0, 60, key, meta, 120)
    second = deliveries.count_delivery_and_start(redis_client, "t-6", 0, 60, key, meta, 120)
    assert (first, second) == (1, 2)
    assert deliveries.attempts(redis_client, "t-6") == 2
    stored = _stored(redis_client, "t-6")
    assert stored["status"] == "STARTED" and stored["result"] == {"pid": 7, "hostname": "w1@host"}
    assert stored["kwargs"] == {"x": 1} and stored["worker"] == "w1@host"  # result_extended, as Celery
    assert 0 < redis_client.ttl(key) <= 120
    # A redelivery after the task finished counts, and leaves the SUCCESS alone.
    backend.store_result("t-6", "finished", states.SUCCESS, request=request)
    assert deliveries.count_delivery_and_start(redis_client, "t-6", 0, 60, key, meta, 120) == 3
    assert _stored(redis_client, "t-6")["status"] == "SUCCESS"
    app.close()


def test_one_script_counts_stores_or_does_both(redis_client: redis.Redis) -> None:
    count = DeliveryCount(deliveries.deliveries_key("t-7"), attempt=0, ttl=60)
    key = "celery-task-meta-t-7"
    started = json.dumps({"status": "STARTED", "task_id": "t-7"})
    # Count alone (a task that stored no state), then raised to a minimum (a redelivery).
    assert count_and_store(redis_client, count=count) == (1, False)
    assert count_and_store(redis_client, count=count, minimum=5) == (5, False)
    assert redis_client.get(key) is None
    # Store alone, then both: a state with its count.
    assert count_and_store(redis_client, state=(key, started, 120)) == (0, True)
    assert 0 < redis_client.ttl(key) <= 120
    success = json.dumps({"status": "SUCCESS", "task_id": "t-7"})
    assert count_and_store(redis_client, state=(key, success, 0), count=count) == (6, True)
    assert redis_client.ttl(key) == -1  # no TTL: kept
    # A stored SUCCESS is never replaced, and the delivery is still counted.
    assert count_and_store(redis_client, state=(key, started, 120), count=count) == (7, False)
    assert _stored(redis_client, "t-7")["status"] == "SUCCESS"
    assert deliveries.attempts(redis_client, "t-7") == 7
    assert 0 < redis_client.ttl(count.key) <= 60
