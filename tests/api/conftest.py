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
import uvicorn
from fastapi import FastAPI

import tests.support.tasks  # noqa: F401 - registers the probe action for the API's producer
from api.app import create_app
from config import reload_settings
from fabric.producer import MessageQueue, reset_message_queue
from fabric.redis_clients import reset_redis
from services.cache import reset_cache
from services.storage import reset_storage_service
from tests.support.fleet import reset_process_clients
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, NanioServer, nanio_server
from tests.support.servers import RedisServer, free_port, wait_until

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


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    overrides = {"STORAGE_PUBLIC_URL": url, "API_KEYS": API_KEYS, "API_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    reset_process_clients()
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
        reset_process_clients()


@pytest.fixture
def api(api_server: ApiServer, mq: MessageQueue) -> Iterator[httpx.Client]:
    """An admin client of the running API, with Redis emptied and the services rebuilt for this test."""
    with api_server.client() as client:
        yield client


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


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A broker of this test's own (stopped by the test), made the process's REDIS_URL for its duration (the
    API served by ``api_server`` runs in this process, so it uses this broker too)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    saved = os.environ["REDIS_URL"]
    os.environ["REDIS_URL"] = server.url
    reload_settings()
    reset_message_queue()
    reset_redis()
    reset_cache()
    try:
        yield server
    finally:
        server.stop()
        os.environ["REDIS_URL"] = saved
        reload_settings()
        reset_message_queue()
        reset_redis()
        reset_cache()
