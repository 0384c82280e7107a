"""Storage fixtures: a nanio S3 server and an HTTP server for the local store's presigned URLs (both for the
session), and ``storage``, which runs a test once per backend."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from api.presign import create_app, local_storage
from services.storage.base import StorageService
from services.storage.local import LocalStorage
from services.storage.minio_backend import MinioStorage
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, NanioServer, nanio_server
from tests.support.servers import free_port, port_open, wait_until

__all__ = ["nanio_server"]

SIGNING_KEY = "contract-suite-signing-key"


class PresignServer:
    """``api.presign`` under uvicorn in a thread; ``serve(storage)`` chooses the store it answers from."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._storage: LocalStorage | None = None
        app = create_app()
        app.dependency_overrides[local_storage] = self._current
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="presign-server", daemon=True)

    def _current(self) -> LocalStorage:
        assert self._storage is not None, "PresignServer.serve() was not called"
        return self._storage

    def serve(self, storage: LocalStorage) -> None:
        self._storage = storage

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: port_open(self.port), timeout=15, what=f"presign server on port {self.port}")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture(scope="session")
def presign_server() -> Iterator[PresignServer]:
    server = PresignServer()
    server.start()
    yield server
    server.stop()


def make_local(root: Path, presign: PresignServer) -> LocalStorage:
    storage = LocalStorage(root, SIGNING_KEY, presign.url)
    presign.serve(storage)
    return storage


def make_minio(server: NanioServer) -> MinioStorage:
    return MinioStorage(server.endpoint, ACCESS_KEY, SECRET_KEY, region=REGION)


@pytest.fixture(params=["local", "minio"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageService:
    """The same test against the local store and against MinIO's adapter on nanio."""
    if request.param == "local":
        return make_local(tmp_path / "objects", request.getfixturevalue("presign_server"))
    return make_minio(request.getfixturevalue("nanio_server"))


@pytest.fixture
def backend_root(storage: StorageService, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The directory where the backend under test keeps its bytes (to prove nothing was written)."""
    if isinstance(storage, LocalStorage):
        return tmp_path
    server: NanioServer = request.getfixturevalue("nanio_server")
    return server.data_dir


@pytest.fixture
def bucket() -> str:
    """A bucket name no other test uses (nanio lives for the whole session)."""
    return f"test-{uuid.uuid4().hex[:16]}"


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size."""
    found: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = path.stat().st_size
    return found
