"""The processes ``wft run`` starts and stops: Redis (when none answers), Celery workers, Flower."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import redis

from services.errors import ConfigurationError


class Child:
    """A background process with its output in a log file; ``stop`` ends it and everything it started."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(url: str, data_dir: Path, log_dir: Path) -> Child:
    """Start ``redis-server`` for ``url`` (a local address) with AOF persistence under ``data_dir``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    if host not in {"localhost", "127.0.0.1", "::1"}:
        raise ConfigurationError(
            f"no Redis answers at {host}:{port}; start it, or point REDIS_URL at one that runs"
        )
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigurationError("redis-server is not installed: run `sudo apt-get install redis-server`")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--appendonly", "yes",
            "--save", "", "--protected-mode", "yes"]  # fmt: skip
    if parts.password:
        argv += ["--requirepass", parts.password]
    child = Child("redis", argv, log_dir).start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_answers(url):
            return child
        if not child.alive():
            break
        time.sleep(0.1)
    child.stop()
    raise ConfigurationError(f"redis-server did not start on port {port}:\n{child.tail()}")


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *args]
