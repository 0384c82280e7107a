"""A private ``nanio`` S3 server for tests: it checks SigV4 signatures, presigned-URL expiry and multipart the
way S3 does, so the MinIO adapter is tested against real wire behaviour.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from tests.support.servers import ManagedProcess, ServerUnavailable, free_port, port_open, wait_until

ACCESS_KEY = "nanio-test-access"
SECRET_KEY = "nanio-test-secret-0123456789"
REGION = "us-east-1"


class NanioServer(ManagedProcess):
    """``nanio serve`` on a free port of 127.0.0.1, its buckets under ``workdir/data``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("nanio", path=str(Path(sys.executable).parent)) or shutil.which("nanio")
        if binary is None:
            raise ServerUnavailable("nanio is not installed: run `.venv/bin/pip install nanio`")
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        argv = [
            binary, "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--region", REGION,
            "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip
        env = {**os.environ, "NANIO_ACCESS_KEY": ACCESS_KEY, "NANIO_SECRET_KEY": SECRET_KEY}
        super().__init__(argv, workdir, f"nanio-{self.port}", env=env)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> Minio:
        """A raw minio client of this server (for checks the storage contract does not expose)."""
        return Minio(self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region=REGION)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        try:
            wait_until(lambda: port_open(self.port) and self.client().list_buckets() is not None, timeout=20,
                       what=f"nanio on port {self.port}")  # fmt: skip
        except TimeoutError as exc:
            self.stop()
            raise ServerUnavailable(f"nanio did not start: {exc}\n{self.log_tail()}") from exc


@pytest.fixture(scope="session")
def nanio_server(session_root: Path) -> Iterator[NanioServer]:
    """One nanio for the whole session; tests keep apart by using buckets of their own."""
    server = NanioServer(session_root / "nanio")
    server.start()
    yield server
    server.stop()
