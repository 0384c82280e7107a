"""At-least-once delivery, dead-lettering and replay, JSON-only messages and a broker restart, with real
worker processes that are killed for real."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from services.message_queue import MessageQueue, make_producer_app
from tests.fabric.conftest import runs, wait_for_state
from tests.support.fleet import StartWorker
from tests.support.servers import RedisServer, wait_until
from tests.support.tasks import effects_key


def probe(tag: str, **extra: object) -> dict[str, object]:
    return {"action": "probe", "tag": tag, **extra}


def test_killed_worker_process_mid_task_reruns_and_records_effect_once(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    worker = start_worker(["workflow_execution"], concurrency=1)
    message_id = mq.enqueue("workflow_execution", probe("kill-mid", sleep=2))
    wait_until(lambda: len(runs(redis_client, "kill-mid")) == 1, what="the task to start")
    (child,) = worker.child_pids()
    import os
    import signal

    os.kill(child, signal.SIGKILL)  # kill -9 of the process running the task, mid-task
    status = wait_for_state(mq, message_id, {"SUCCESS"}, timeout=60)
    assert status["attempts"] == 2
    assert len(runs(redis_client, "kill-mid")) == 2
    assert redis_client.lrange(effects_key("kill-mid"), 0, -1) == [message_id.encode()]


@pytest.mark.slow
def test_killed_worker_main_process_is_redelivered_after_visibility_timeout(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # A short visibility timeout for both sides, so the lost message comes back within the test.
    short = {"TASK_TIME_LIMIT": "4", "TASK_SOFT_TIME_LIMIT": "3", "MAX_DELAY_SECONDS": "1",
             "RETRY_BACKOFF_MAX": "1", "VISIBILITY_MARGIN": "1", "UNACKED_RESTORE_INTERVAL": "1"}  # fmt: skip
    worker = start_worker(["indexing_tasks"], env=short)
    message_id = mq.enqueue("indexing_tasks", probe("kill-main", sleep=1))
    wait_until(lambda: len(runs(redis_client, "kill-main")) == 1, what="the task to start")
    worker.kill9()
    assert mq.get_status(message_id)["state"] != "SUCCESS"
    start_worker(["indexing_tasks"], env=short)
    status = wait_for_state(mq, message_id, {"SUCCESS"}, timeout=60)
    assert status["attempts"] == 2
    assert redis_client.lrange(effects_key("kill-main"), 0, -1) == [message_id.encode()]


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
def test_queued_messages_survive_a_redis_restart(tmp_path: Path, start_worker: StartWorker) -> None:
    server = RedisServer(tmp_path / "aof-redis", appendonly=True)
    with server.running():
        from config.settings import Settings

        settings = Settings(redis_url=server.url)
        producer = MessageQueue(app=make_producer_app(settings), settings=settings)
        total = 10_000
        for _ in range(total):
            producer.enqueue("indexing_tasks", probe("restart"))
        assert producer.queue_stats("indexing_tasks")["pending"] == total
        server.shutdown()  # an operator's restart: Redis writes its AOF and exits
        server.start()
        producer.app.pool.force_close_all()
        client = server.client()
        assert producer.queue_stats("indexing_tasks")["pending"] == total
        start_worker(
            ["indexing_tasks"], concurrency=2, env={"REDIS_URL": server.url}, wait=False, loglevel="WARNING"
        )
        wait_until(lambda: client.llen(effects_key("restart")) == total, timeout=240, interval=1,
                   what="all 10,000 messages to run")  # fmt: skip
        assert client.llen(effects_key("restart")) == total
        assert producer.queue_stats("indexing_tasks")["pending"] == 0
