from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.message_queue import MessageQueue, get_message_queue, reset_message_queue
from services.redis_client import reset_redis
from services.search import reset_search_service
from services.vectors import reset_vector_service
from tests.support.workers import WorkerProcess

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def mq(redis_client: redis.Redis) -> Iterator[MessageQueue]:
    reset_message_queue()
    reset_redis()
    reset_search_service()
    reset_vector_service()
    yield get_message_queue()
    reset_message_queue()


@pytest.fixture
def start_worker(tmp_path: Path, mq: MessageQueue) -> Iterator[StartWorker]:
    """Start real ``celery worker`` subprocesses; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(queues: list[str], wait: bool = True, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / "workers", queues, **kwargs)
        worker.start()
        started.append(worker)
        if wait:
            worker.wait_ready(mq.app, timeout=60)
        return worker

    yield start
    for worker in started:
        worker.stop()
