"""The in-process worker of the harness (``celery.contrib.testing``): a real Celery worker on threads inside
the test process, consuming from the session Redis. Quick to start, so it suits tests that need a worker but
do not kill one."""

from __future__ import annotations

from collections.abc import Iterator

import celery.contrib.testing.tasks  # noqa: F401 - registers celery.ping, which start_worker's check needs
import pytest
import redis
from celery.contrib.testing.worker import start_worker

import tests.support.tasks  # noqa: F401 - the probe task and action
from config.queues import QUEUES
from fabric.producer import MessageQueue
from tasks.app import app
from tests.fabric.conftest import runs, wait_for_state


@pytest.fixture(scope="module")
def inprocess_worker() -> Iterator[None]:
    app.loader.import_default_modules()
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=True, shutdown_timeout=30,
                      queues=list(QUEUES), loglevel="WARNING"):  # fmt: skip
        yield


def test_enqueued_message_runs_and_reports_its_result(
    mq: MessageQueue, redis_client: redis.Redis, inprocess_worker: None
) -> None:
    message_id = mq.enqueue("analytics_tasks", {"action": "probe", "tag": "inproc", "value": [1, "two"]})
    status = wait_for_state(mq, message_id, {"SUCCESS"})
    assert status["result"] == {"tag": "inproc", "value": [1, "two"]}
    assert status["attempts"] == 1
    assert [r["queue"] for r in runs(redis_client, "inproc")] == ["analytics_tasks"]


def test_permanent_failure_reaches_the_dead_letter_store(
    mq: MessageQueue, redis_client: redis.Redis, inprocess_worker: None
) -> None:
    message_id = mq.enqueue("vector_tasks", {"action": "probe", "tag": "inproc-dead", "fail": "permanent"})
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"})
    assert status["dead_letter"]["reason"] == "permanent"
    assert mq.queue_stats("vector_tasks")["dead_lettered"] == 1
