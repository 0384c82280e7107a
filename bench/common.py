"""What every benchmark needs: a private Redis and data directory that this process and every worker it
starts read through the settings, and the caller's settings restored afterwards."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.fleet import reset_process_clients
from tests.support.servers import RedisServer
from tests.support.workers import WorkerProcess


@dataclass
class Sandbox:
    workdir: Path
    redis: RedisServer

    @property
    def redis_url(self) -> str:
        return self.redis.url


def reset_process_state() -> None:
    """Read the settings again and drop every per-process client built from the old ones."""
    reset_process_clients()


@contextmanager
def sandbox(prefix: str) -> Iterator[Sandbox]:
    """A temporary directory with a private ``redis-server``; ``REDIS_URL`` and ``DATA_DIR`` point at them
    while the block runs (workers started inside inherit them) and are restored after."""
    previous = {key: os.environ.get(key) for key in ("REDIS_URL", "DATA_DIR")}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis")
        with server.running():
            os.environ["REDIS_URL"] = server.url
            os.environ["DATA_DIR"] = str(workdir / "data")
            reset_process_state()
            try:
                yield Sandbox(workdir, server)
            finally:
                for key, value in previous.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                reset_process_state()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_cpu(worker: WorkerProcess) -> tuple[float, float]:
    """CPU seconds so far of a worker's main process and of its pool processes together."""
    assert worker.proc is not None
    return cpu_seconds(worker.proc.pid), sum(cpu_seconds(pid) for pid in worker.child_pids())
