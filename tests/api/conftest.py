"""The API served for real: uvicorn on a free port in a thread of the test process (so the ``probe`` test
action registered by ``tests.support.tasks`` is known to it), the session Redis, and real workers."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

import tests.support.tasks  # noqa: F401 - registers the probe action for the API's producer
from api.app import create_app
from config import reload_settings
from config.queues import QUEUES
from services.cache import reset_cache
from services.message_queue import MessageQueue, get_message_queue, reset_message_queue
from services.redis_client import reset_redis
from services.search import reset_search_service
from services.storage import reset_storage_service
from services.vectors import reset_vector_service
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, NanioServer, nanio_server
from tests.support.servers import free_port, wait_until
from tests.support.workers import WorkerProcess

ADMIN_KEY = "test-admin-key"  # from TEST_ENV in tests/conftest.py
READ_KEY = "test-read-key"
WRITE_KEY = "test-write-key"
ENQUEUE_KEY = "test-enqueue-key"
API_KEYS = f"{ADMIN_KEY}:admin,{READ_KEY}:read,{WRITE_KEY}:read+write,{ENQUEUE_KEY}:enqueue"
#: Small enough that a test can send more, large enough for every ordinary request of these tests.
MAX_BODY_BYTES = 256 * 1024

__all__ = ["nanio_server"]  # the session nanio, for minio_backend


@dataclass
class ApiServer:
    app: FastAPI
    url: str

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _reset_services() -> None:
    reset_message_queue()
    reset_redis()
    reset_cache()
    reset_storage_service()
    reset_search_service()
    reset_vector_service()


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    overrides = {"STORAGE_PUBLIC_URL": url, "API_KEYS": API_KEYS, "API_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    reload_settings()
    _reset_services()
    app = create_app()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, what="the API server to start")
        yield ApiServer(app=app, url=url)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_settings()
        _reset_services()


@pytest.fixture
def mq(redis_client: redis.Redis) -> Iterator[MessageQueue]:
    _reset_services()
    yield get_message_queue()
    _reset_services()


@pytest.fixture
def api(api_server: ApiServer, mq: MessageQueue) -> Iterator[httpx.Client]:
    """An admin client of the running API, with Redis emptied and the services rebuilt for this test."""
    with api_server.client() as client:
        yield client


@pytest.fixture
def fleet(tmp_path: Path, mq: MessageQueue) -> Iterator[list[WorkerProcess]]:
    """Real workers: one per queue group, as a deployment runs them."""
    groups = [["workflow_execution"], ["indexing_tasks", "vector_tasks", "analytics_tasks", "dead_letter"]]
    assert {q for g in groups for q in g} == set(QUEUES)
    workers = [
        WorkerProcess(tmp_path / "workers", g, concurrency=2, name=f"api{i}") for i, g in enumerate(groups)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready(mq.app, timeout=60)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def minio_backend(request: pytest.FixtureRequest, mq: MessageQueue) -> Iterator[NanioServer]:
    """The process's storage switched to the MinIO adapter on a real S3 server (nanio) for one test."""
    nanio: NanioServer = request.getfixturevalue("nanio_server")
    overrides = {
        "STORAGE_BACKEND": "minio",
        "MINIO_ENDPOINT": nanio.endpoint,
        "MINIO_ACCESS_KEY": ACCESS_KEY,
        "MINIO_SECRET_KEY": SECRET_KEY,
        "MINIO_REGION": REGION,
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    reload_settings()
    reset_storage_service()
    try:
        yield nanio
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_settings()
        reset_storage_service()
