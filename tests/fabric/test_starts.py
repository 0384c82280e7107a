"""Deferred starts (fabric.starts): a first delivery that ends within the grace period is counted with its
final state in one round trip and never shows a STARTED state; one that runs longer shows STARTED, counted,
as before; the final state never lands before a STARTED write in flight. The registry with real threads,
the backend against the session's real Redis, and a real worker end to end."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
from celery import states
from celery.app.task import Context

from fabric import deliveries, starts
from fabric.producer import MessageQueue
from fabric.result_backend import RedisResultBackend
from fabric.starts import DeliveryCount, PendingStarts
from tests.fabric.conftest import configured_app, wait_for_state
from tests.support.fleet import StartWorker
from tests.support.roundtrips import RoundTrips
from tests.support.servers import wait_until

COUNT = DeliveryCount("test:deliveries:x", 0, 60)


class Writes:
    """A ``write`` that records its calls, optionally blocking until released or failing."""

    def __init__(self, block: bool = False, fail: bool = False) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.fail = fail

    def __call__(self) -> None:
        self.entered.set()
        self.release.wait(10)
        self.calls += 1
        if self.fail:
            raise ConnectionError("redis went away")


def test_a_start_finished_within_the_grace_period_is_never_written() -> None:
    registry = PendingStarts(grace=0.5)
    write = Writes()
    registry.begin("a", COUNT, write)
    assert registry.finish("a") == COUNT  # the caller counts the delivery with the final state
    time.sleep(1.0)  # two grace periods: the thread has looked after the start was due
    assert write.calls == 0
    assert registry.pending() == 0
    assert registry.finish("a") is None  # finishing twice counts nothing twice


def test_a_start_still_running_after_the_grace_period_is_written_once() -> None:
    registry = PendingStarts(grace=0.05)
    write = Writes()
    registry.begin("b", COUNT, write)
    wait_until(lambda: write.calls == 1, timeout=5, what="the STARTED write")
    assert registry.finish("b") is None  # counted with the STARTED state already
    time.sleep(0.1)
    assert write.calls == 1


def test_the_final_state_waits_for_a_started_write_in_flight() -> None:
    registry = PendingStarts(grace=0.02)
    write = Writes(block=True)
    registry.begin("c", COUNT, write)
    assert write.entered.wait(5)
    finished: list[DeliveryCount | None] = []
    finisher = threading.Thread(target=lambda: finished.append(registry.finish("c")))
    finisher.start()
    finisher.join(0.2)
    assert finisher.is_alive() and finished == []  # held back while STARTED is being written
    write.release.set()
    finisher.join(5)
    assert finished == [None]


def test_a_body_that_reads_its_count_has_its_start_written_at_once() -> None:
    registry = PendingStarts(grace=10)
    write = Writes()
    registry.begin("g", COUNT, write)
    registry.write_now("g")
    assert write.calls == 1  # in this thread, before write_now returned
    assert registry.finish("g") is None
    registry.write_now("g")  # nothing pending: nothing written
    assert write.calls == 1


def test_a_failed_started_write_leaves_the_count_to_the_final_state() -> None:
    registry = PendingStarts(grace=0.02)
    write = Writes(fail=True)
    registry.begin("d", COUNT, write)
    wait_until(lambda: write.calls == 1, timeout=5, what="the write to fail")
    assert registry.finish("d") == COUNT  # pending again (tried later), so the final state counts it
    time.sleep(starts.RETRY_AFTER + 0.2)
    assert write.calls == 1  # finished: never tried again


def test_finish_current_is_per_thread() -> None:
    registry = PendingStarts(grace=10)
    registry.begin("main", COUNT, Writes())
    other: list[DeliveryCount | None] = []

    def in_other_thread() -> None:
        registry.begin("other", DeliveryCount("k", 1, 5), Writes())
        other.append(registry.finish_current())

    thread = threading.Thread(target=in_other_thread)
    thread.start()
    thread.join(5)
    assert other == [DeliveryCount("k", 1, 5)]
    assert registry.finish_current() == COUNT
    assert registry.finish_current() is None


def test_an_idle_start_thread_wakes_for_the_next_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(starts, "IDLE_AFTER", 0.05)
    registry = PendingStarts(grace=0.02)
    first = Writes()
    registry.begin("e", COUNT, first)
    wait_until(lambda: first.calls == 1, timeout=5, what="the first write")
    wait_until(lambda: registry._idle, timeout=5, what="the thread to go idle")
    second = Writes()
    registry.begin("f", COUNT, second)
    wait_until(lambda: second.calls == 1, timeout=5, what="the write after waking up")


def test_redelivered_reads_the_header_and_the_delivery_info() -> None:
    assert not starts.redelivered(Context({"delivery_info": {"routing_key": "q"}}))
    assert starts.redelivered(Context({"redelivered": True}))
    assert starts.redelivered(Context({"delivery_info": {"redelivered": True}}))


# --- the result backend, against real Redis -------------------------------------------------------------


def test_the_final_state_and_the_delivery_count_are_one_round_trip(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(starts.pending_starts, "grace", 30.0)  # no STARTED write races the test
    app = configured_app()
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    starts.pending_starts.begin("warm", deliveries.delivery_count("warm", 0, 60), Writes())
    backend.store_result("warm", 1, states.SUCCESS)  # loads the script once
    starts.pending_starts.begin("t-1", deliveries.delivery_count("t-1", 0, 60), Writes())
    backend.store_result("warm", 1, states.SUCCESS)  # another task's state leaves t-1's start alone
    trips = RoundTrips(monkeypatch)
    backend.store_result("t-1", {"ok": 1}, states.SUCCESS, request=Context({"retries": 0}))
    assert trips.count == 1
    assert deliveries.attempts(redis_client, "t-1") == 1
    assert 0 < redis_client.ttl(deliveries.deliveries_key("t-1")) <= 60
    assert json.loads(redis_client.get("celery-task-meta-t-1") or b"{}")["status"] == "SUCCESS"
    assert starts.pending_starts.pending() == 0
    app.close()


def test_a_task_that_stored_no_state_is_counted_when_its_process_cleans_up(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(starts.pending_starts, "grace", 30.0)
    app = configured_app()
    backend = app.backend
    starts.pending_starts.begin("t-2", deliveries.delivery_count("t-2", 1, 60), Writes())
    backend.process_cleanup()  # what the tracer calls after every task (here: one that raised Ignore)
    assert redis_client.hgetall(deliveries.deliveries_key("t-2")) == {b"1": b"1"}
    assert redis_client.get("celery-task-meta-t-2") is None
    backend.process_cleanup()
    assert deliveries.attempts(redis_client, "t-2") == 1
    app.close()


def test_a_redelivery_counts_as_at_least_the_second_delivery(redis_client: redis.Redis) -> None:
    # Its first delivery died within the grace period, uncounted.
    assert deliveries.count_delivery(redis_client, "t-3", 0, 60, minimum=2) == 2
    assert deliveries.count_delivery(redis_client, "t-3", 0, 60, minimum=2) == 3
    # One whose first delivery was counted (it ran past the grace period) counts on from there.
    assert deliveries.count_delivery(redis_client, "t-4", 0, 60) == 1
    assert deliveries.count_delivery(redis_client, "t-4", 0, 60, minimum=2) == 2


# --- a real worker ----------------------------------------------------------------------------------------


def _published_states(pubsub: Any, message_ids: list[str], timeout: float = 30) -> dict[str, list[str]]:
    """The states published on each message's result channel, in order, until each has its SUCCESS."""
    seen: dict[str, list[str]] = {message_id: [] for message_id in message_ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all("SUCCESS" in got for got in seen.values()):
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            meta = json.loads(message["data"])
            if meta.get("task_id") in seen:
                seen[meta["task_id"]].append(meta["status"])
    return seen


def test_a_short_task_goes_straight_to_its_final_state_and_a_long_one_shows_started(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["analytics_tasks"])
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("celery-task-meta-*")
    try:
        # A probe takes a few milliseconds; a busy machine may still hold one past the grace period, so
        # of five, each either goes straight to SUCCESS or shows STARTED first, and most go straight.
        shorts = [mq.enqueue("analytics_tasks", {"action": "probe", "tag": f"short-{i}"}) for i in range(5)]
        published = list(_published_states(pubsub, shorts).values())
        assert all(seen in (["SUCCESS"], ["STARTED", "SUCCESS"]) for seen in published), published
        assert published.count(["SUCCESS"]) >= 3, published
        assert [mq.get_status(short)["attempts"] for short in shorts] == [1] * 5

        long = mq.enqueue("analytics_tasks", {"action": "probe", "tag": "long", "sleep": 1.0})
        status = wait_for_state(mq, long, {"STARTED"}, timeout=30)  # seen while it runs
        assert status["attempts"] == 1
        assert _published_states(pubsub, [long]) == {long: ["STARTED", "SUCCESS"]}
        assert mq.get_status(long)["attempts"] == 1
    finally:
        pubsub.close()
