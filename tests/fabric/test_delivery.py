"""Routing, delay, expiry and priority, through real ``celery worker`` processes, on Redis and on RabbitMQ."""

from __future__ import annotations

import time

import pytest
import redis

from config.queues import WORK_QUEUES
from fabric.producer import MessageQueue
from tests.fabric.conftest import runs, wait_for_state
from tests.support.fleet import StartWorker
from tests.support.servers import wait_until


def probe(tag: str, **extra: object) -> dict[str, object]:
    return {"action": "probe", "tag": tag, **extra}


@pytest.fixture
def mq(broker: str, mq: MessageQueue) -> MessageQueue:
    """Every test here runs on each broker (see tests/fabric/conftest.py)."""
    return mq


def test_each_queue_runs_only_on_a_worker_that_consumes_it(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    workers = {q.value: start_worker([q.value], name=f"only-{q.value}") for q in WORK_QUEUES}
    ids = {q.value: mq.enqueue(q.value, probe(f"route-{q.value}")) for q in WORK_QUEUES}
    for queue, message_id in ids.items():
        status = wait_for_state(mq, message_id, {"SUCCESS"})
        assert status["queue"] == queue
        recorded = runs(redis_client, f"route-{queue}")
        assert len(recorded) == 1
        assert recorded[0]["hostname"] == workers[queue].nodename
        assert recorded[0]["queue"] == queue


def test_a_queue_nobody_consumes_keeps_its_message(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["indexing_tasks"])
    message_id = mq.enqueue("analytics_tasks", probe("unconsumed"))
    done = mq.enqueue("indexing_tasks", probe("consumed"))
    wait_for_state(mq, done, {"SUCCESS"})
    assert mq.get_status(message_id)["state"] == "PENDING"
    assert mq.queue_stats("analytics_tasks")["pending"] == 1
    assert runs(redis_client, "unconsumed") == []


def test_delay_seconds_holds_the_message_back(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["workflow_execution"])
    sent_at = time.time()
    message_id = mq.enqueue("workflow_execution", probe("delayed"), delay_seconds=2)
    wait_for_state(mq, message_id, {"SUCCESS"})
    (run,) = runs(redis_client, "delayed")
    assert float(run["started"]) >= sent_at + 2


def test_expired_message_is_never_executed(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    expiring = mq.enqueue("vector_tasks", probe("expired"), ttl_seconds=1)
    fresh = mq.enqueue("vector_tasks", probe("fresh"), ttl_seconds=600)
    time.sleep(1.5)
    start_worker(["vector_tasks"])
    status = wait_for_state(mq, expiring, {"EXPIRED"})
    assert status["result"] is None
    wait_for_state(mq, fresh, {"SUCCESS"})
    assert runs(redis_client, "expired") == []
    assert len(runs(redis_client, "fresh")) == 1


def test_higher_priority_runs_first(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    low = [mq.enqueue("analytics_tasks", probe("prio"), priority=0) for _ in range(10)]
    high = [mq.enqueue("analytics_tasks", probe("prio"), priority=9) for _ in range(10)]
    start_worker(["analytics_tasks"], concurrency=1)
    wait_until(lambda: len(runs(redis_client, "prio")) == 20, timeout=60, what="all 20 probes to run")
    order = [run["id"] for run in runs(redis_client, "prio")]
    assert set(order[:10]) == set(high)
    assert set(order[10:]) == set(low)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)  # reads kombu's Redis lists
def test_guide_payload_priority_is_used_when_none_is_given(
    mq: MessageQueue, redis_client: redis.Redis
) -> None:
    mq.enqueue("workflow_execution", {"workflow_id": "wf", "priority": 9})
    mq.enqueue("workflow_execution", {"workflow_id": "wf"}, priority=9)
    mq.enqueue("workflow_execution", {"workflow_id": "wf"})
    # kombu's Redis transport keeps one list per priority level; level 0 pops first.
    assert redis_client.llen("workflow_execution") == 2
    assert redis_client.llen("workflow_execution\x06\x169") == 1
