"""At-least-once delivery, lost workers, dead-lettering and replay, JSON-only messages and a broker restart,
with real worker processes that are killed for real, on Redis and on RabbitMQ."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from fabric.producer import MessageQueue, make_producer_app
from tests.fabric.conftest import runs, wait_for_state
from tests.support.fleet import StartWorker
from tests.support.servers import RabbitMQServer, RedisServer, wait_until
from tests.support.tasks import effects_key

#: Lost-worker recovery in seconds for these tests (default 60); every other setting stays the default.
LOST_AFTER = 5
FAST_RECOVERY = {"WORKER_LOST_AFTER": str(LOST_AFTER)}


@pytest.fixture
def mq(broker: str, mq: MessageQueue) -> MessageQueue:
    """Every test here runs on each broker (see tests/fabric/conftest.py)."""
    return mq


def probe(tag: str, **extra: object) -> dict[str, object]:
    return {"action": "probe", "tag": tag, **extra}


def test_killed_worker_process_mid_task_reruns_and_records_effect_once(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    worker = start_worker(["workflow_execution"], concurrency=1)
    message_id = mq.enqueue("workflow_execution", probe("kill-mid", sleep=2))
    wait_until(lambda: len(runs(redis_client, "kill-mid")) == 1, what="the task to start")
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)  # kill -9 of the process running the task, mid-task
    status = wait_for_state(mq, message_id, {"SUCCESS"}, timeout=60)
    assert status["attempts"] == 2
    assert len(runs(redis_client, "kill-mid")) == 2
    assert redis_client.lrange(effects_key("kill-mid"), 0, -1) == [message_id.encode()]


def test_whole_worker_killed_mid_task_its_message_runs_elsewhere_within_worker_lost_after(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # kill -9 of the main process and the pool, as when a host, VM or container dies: nothing acks or
    # requeues. Default settings but WORKER_LOST_AFTER: the visibility timeout stays over an hour.
    doomed = start_worker(["indexing_tasks"], env=FAST_RECOVERY, name="doomed")
    hold = f"test:hold:{uuid.uuid4()}"
    redis_client.set(hold, 1)  # the task runs until the test lets it finish
    message_id = mq.enqueue("indexing_tasks", probe("kill-main", block_while=hold))
    wait_until(lambda: len(runs(redis_client, "kill-main")) == 1, what="the task to start")
    survivor = start_worker(["indexing_tasks"], env=FAST_RECOVERY, name="survivor")
    doomed.kill9()
    killed_at = time.time()
    redis_client.delete(hold)  # the next delivery finishes at once
    assert mq.get_status(message_id)["state"] != "SUCCESS"
    # Back on its queue within WORKER_LOST_AFTER; allow a few seconds to be picked up on a busy machine.
    wait_until(lambda: len(runs(redis_client, "kill-main")) == 2, timeout=LOST_AFTER + 10,
               what="the message to run again on the survivor")  # fmt: skip
    second = runs(redis_client, "kill-main")[1]
    assert second["hostname"] == survivor.nodename
    assert float(second["started"]) - killed_at <= LOST_AFTER + 10
    status = wait_for_state(mq, message_id, {"SUCCESS"}, timeout=60)
    assert status["attempts"] == 2
    assert redis_client.lrange(effects_key("kill-main"), 0, -1) == [message_id.encode()]


def test_messages_held_three_times_longer_than_worker_lost_after_run_once_on_live_workers(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # One message runs for 3x WORKER_LOST_AFTER, another waits 3x for its countdown, while a second
    # worker is idle: a live worker's messages are never handed to another one.
    for name in ("holder-a", "holder-b"):
        start_worker(["analytics_tasks"], env=FAST_RECOVERY, name=name)
    running = mq.enqueue("analytics_tasks", probe("long-run", sleep=3 * LOST_AFTER))
    waiting = mq.enqueue("analytics_tasks", probe("long-wait"), delay_seconds=3 * LOST_AFTER)
    for message_id in (running, waiting):
        status = wait_for_state(mq, message_id, {"SUCCESS"}, timeout=6 * LOST_AFTER + 30)
        assert status["attempts"] == 1
    time.sleep(LOST_AFTER)  # a needless redelivery would show up by now
    assert len(runs(redis_client, "long-run")) == 1
    assert len(runs(redis_client, "long-wait")) == 1


def test_a_message_that_kills_every_worker_it_reaches_ends_in_dead_letter(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    flag = f"test:host-poison:{uuid.uuid4()}"
    redis_client.set(flag, 1)
    env = {**FAST_RECOVERY, "MAX_DELIVERIES": "2"}
    workers = [start_worker(["vector_tasks", "dead_letter"], env=env, name=f"victim{i}") for i in range(3)]
    message_id = mq.enqueue("vector_tasks", probe("host-poison", kill_worker_while=flag))
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"}, timeout=4 * LOST_AFTER + 60)
    assert len(runs(redis_client, "host-poison")) == 2  # two whole workers died; the third did not run it
    assert status["attempts"] == 3
    assert status["dead_letter"]["reason"] == "poison"
    assert sum(worker.alive() for worker in workers) == 1


def test_poison_message_is_dead_lettered_after_max_deliveries_and_replay_reruns_it(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    flag = f"test:poison:{uuid.uuid4()}"
    redis_client.set(flag, 1)
    start_worker(["vector_tasks", "dead_letter"], concurrency=1, env={"MAX_DELIVERIES": "3"})
    message_id = mq.enqueue("vector_tasks", probe("poison", kill_while=flag), priority=7)
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"}, timeout=90)
    assert (
        len(runs(redis_client, "poison")) == 3
    )  # three deliveries killed the worker, the fourth did not run
    assert status["attempts"] == 4
    dead = status["dead_letter"]
    assert dead["reason"] == "poison"
    assert dead["queue"] == "vector_tasks"
    assert dead["priority"] == 7
    assert dead["kwargs"]["payload"]["tag"] == "poison"
    assert dead["error"]["type"] == "PoisonMessage"
    assert dead["dead_lettered_at"] >= dead["failed_at"] > 0
    assert mq.queue_stats("vector_tasks")["dead_lettered"] == 1
    assert [d["id"] for d in mq.list_dead_letters()] == [message_id]

    redis_client.delete(flag)  # the bug is fixed; replay
    new_id = mq.replay_dead_letter(message_id)
    assert new_id != message_id
    wait_for_state(mq, new_id, {"SUCCESS"})
    assert len(runs(redis_client, "poison")) == 4
    assert mq.list_dead_letters() == []
    assert mq.queue_stats("vector_tasks")["dead_lettered"] == 0


def test_permanent_failure_is_dead_lettered_at_once(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["indexing_tasks", "dead_letter"])
    message_id = mq.enqueue("indexing_tasks", probe("permanent", fail="permanent"))
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"})
    assert len(runs(redis_client, "permanent")) == 1
    assert status["dead_letter"]["reason"] == "permanent"
    assert status["error"] == {
        "type": "InvalidInput",
        "message": "probe permanent fails permanently by design",
    }


def test_transient_failure_retries_then_dead_letters(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["analytics_tasks", "dead_letter"], env={"MAX_RETRIES": "2", "RETRY_BACKOFF_MAX": "1"})
    message_id = mq.enqueue("analytics_tasks", probe("transient", fail="transient"))
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"}, timeout=60)
    assert len(runs(redis_client, "transient")) == 3  # the first try and two retries
    assert status["attempts"] == 3
    assert status["dead_letter"]["reason"] == "retries_exhausted"
    assert status["dead_letter"]["retries"] == 2


def test_pickled_message_is_refused_and_never_executed(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    start_worker(["workflow_execution"])
    evil = mq.app.send_task(
        "testing.probe", kwargs={"payload": probe("pickled")}, queue="workflow_execution", serializer="pickle"
    )
    good = mq.enqueue("workflow_execution", probe("after-pickle"))
    wait_for_state(mq, good, {"SUCCESS"})
    assert runs(redis_client, "pickled") == []
    assert mq.get_status(evil.id)["state"] == "PENDING"
    assert mq.queue_stats("workflow_execution")["pending"] == 0  # refused and dropped, not looping


@pytest.mark.slow
def test_queued_messages_survive_a_broker_restart(
    broker: str, tmp_path: Path, start_worker: StartWorker, request: pytest.FixtureRequest
) -> None:
    # Redis with AOF persistence, as ./run.sh and the deploy files run it; RabbitMQ with its durable queues
    # and persistent messages (Celery's defaults). An operator's restart, then every message runs.
    from config.settings import Settings

    total = 10_000
    if broker == "redis":
        server = RedisServer(tmp_path / "aof-redis", appendonly=True)
        server.start()
        settings = Settings(redis_url=server.url)
        counts = server.client()
        worker_env = {"REDIS_URL": server.url}
        restart = server.shutdown, server.start
        request.addfinalizer(server.stop)
    else:
        rabbit: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        settings = Settings()  # BROKER_URL points at the session's RabbitMQ; results in the session Redis
        counts = redis.Redis.from_url(settings.redis_url)
        worker_env = {}
        restart = rabbit.stop, rabbit.start
    producer = MessageQueue(app=make_producer_app(settings), settings=settings)
    request.addfinalizer(producer.close)
    # Ten thousand Celery messages, one each (probes are not packed in envelopes), pipelined.
    producer.enqueue_many("indexing_tasks", [probe("restart")] * total)
    # RabbitMQ counts what it has routed; the last publishes may still be on their way.
    wait_until(lambda: producer.queue_stats("indexing_tasks")["pending"] == total, timeout=30,
               what="all 10,000 messages to be queued")  # fmt: skip
    stop, start = restart
    stop()
    start()
    producer.app.pool.force_close_all()
    assert producer.queue_stats("indexing_tasks")["pending"] == total
    start_worker(["indexing_tasks"], concurrency=2, env=worker_env, wait=False, loglevel="WARNING")
    wait_until(lambda: counts.llen(effects_key("restart")) == total, timeout=240, interval=1,
               what="all 10,000 messages to run")  # fmt: skip
    assert counts.llen(effects_key("restart")) == total
    assert producer.queue_stats("indexing_tasks")["pending"] == 0
