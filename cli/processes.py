"""The processes ``wft run`` starts and stops: Redis (when none answers), Celery workers, beat, the API,
Flower; and how it stops them: on Ctrl-C, SIGTERM or SIGHUP alike, every child gets a warm shutdown."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import redis

from fabric.errors import ConfigurationError

#: Flower's configuration: the file every deployment loads (credentials, state file and save interval,
#: purge of offline workers from the settings).
FLOWER_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "flower" / "flowerconfig.py"

#: The signals that stop ``wft run`` as Ctrl-C (SIGINT) does: systemd, ``docker stop`` and ``timeout`` send
#: SIGTERM; a closed terminal sends SIGHUP.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM: a warm shutdown for Celery, a clean exit for the rest)."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL whatever is left of the process group (a worker's pool outlives a killed main process)
        and reap the process."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate, wait up to ``timeout`` seconds, then kill what is left."""
        self.terminate()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

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


def start_redis(url: str, data_dir: Path, log_dir: Path, children: list[Child]) -> Child:
    """Start ``redis-server`` for ``url`` (a local address) with AOF persistence under ``data_dir``, listed in
    ``children`` before it starts (a stop signal while it comes up still finds it); wait until it answers.
    Raises ``ConfigurationError`` when the address is not local, the binary is missing or it did not start."""
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
    child = Child("redis", argv, log_dir)
    children.append(child)
    child.start()
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


def flower_argv() -> list[str]:
    """``celery flower`` with the deployments' configuration file; raises ``ConfigurationError`` when the
    file is not there (``wft run`` runs from a checkout of the project)."""
    if not FLOWER_CONFIG.is_file():
        raise ConfigurationError(
            f"Flower's configuration {FLOWER_CONFIG} is missing: run `wft run` from a checkout of the "
            "project, or pass --no-flower"
        )
    return celery_argv("flower", f"--conf={FLOWER_CONFIG}")


class StopRequested(BaseException):
    """SIGTERM or SIGHUP arrived: stop everything, as on Ctrl-C. A ``BaseException``, as ``KeyboardInterrupt``
    is, so that no ``except Exception`` on the way (a retry loop, a library) swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`StopRequested` in the main thread, as SIGINT raises
    ``KeyboardInterrupt``, so the caller's ``finally`` stops what it started. The previous handlers are put
    back on the way out."""

    def request_stop(signum: int, frame: object) -> None:
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_all(children: Sequence[Child], grace: float) -> None:
    """Stop every child: a warm shutdown of all at once (SIGTERM), up to ``grace`` seconds for running tasks
    to finish, then SIGKILL for what is left. Redis goes last, so workers can still acknowledge and store the
    results of the tasks they finish. Another Ctrl-C, SIGTERM or SIGHUP meanwhile kills at once."""
    hurry = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        hurry.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        servers = [child for child in children if child.name == "redis"]
        rest = [child for child in children if child not in servers]
        for group in (rest, servers):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + grace
            while any(c.alive() for c in group) and time.monotonic() < deadline and not hurry.is_set():
                time.sleep(0.1)
            for child in group:
                child.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
