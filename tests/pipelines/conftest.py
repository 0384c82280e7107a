from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.queues import QUEUES
from services.message_queue import MessageQueue, get_message_queue, reset_message_queue
from services.redis_client import reset_redis
from tests.support.workers import WorkerProcess


@pytest.fixture
def mq(redis_client: redis.Redis) -> Iterator[MessageQueue]:
    reset_message_queue()
    reset_redis()
    yield get_message_queue()
    reset_message_queue()


@pytest.fixture
def fleet(tmp_path: Path, mq: MessageQueue) -> Iterator[list[WorkerProcess]]:
    """Real workers: one per queue group, as a deployment runs them."""
    groups = [["workflow_execution"], ["indexing_tasks", "vector_tasks", "analytics_tasks", "dead_letter"]]
    assert {q for g in groups for q in g} == set(QUEUES)
    workers = [
        WorkerProcess(tmp_path / "workers", g, concurrency=2, name=f"fleet{i}") for i, g in enumerate(groups)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.wait_ready(mq.app, timeout=60)
    yield workers
    for worker in workers:
        worker.stop()
