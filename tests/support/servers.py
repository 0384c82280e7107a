"""Private servers for tests: each starts on a free port in its own directory and is stopped after.

In CI a server binary that is missing fails the run (``ServerUnavailable``); it is never skipped.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import redis


class ServerUnavailable(RuntimeError):
    """A server a test needs could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it returns a truthy value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}" + (f": {last_error!r}" if last_error else "")
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class ManagedProcess:
    """A subprocess with a log file, stopped (and reaped) on ``stop``."""

    def __init__(
        self, argv: Sequence[str], workdir: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.name = name
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


class RedisServer(ManagedProcess):
    """A private ``redis-server``. ``appendonly=True`` gives the AOF persistence the deploy files use."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed: run `sudo apt-get install redis-server`")
        self.port = port or free_port()
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        super().__init__(argv, workdir, f"redis-{self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        super().start()
        try:
            wait_until(lambda: self.client().ping(), timeout=15, what=f"redis-server on port {self.port}")
        except TimeoutError as exc:
            raise ServerUnavailable(f"redis-server did not start: {exc}\n{self.log_tail()}") from exc

    def shutdown(self) -> None:
        """Stop the way an operator's restart does: Redis flushes its AOF and exits."""
        with contextlib.suppress(redis.ConnectionError):
            self.client().shutdown(nosave=False)
        if self.proc is not None:
            self.proc.wait(15)
            self.proc = None

    @contextlib.contextmanager
    def running(self) -> Iterator[RedisServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class RabbitMQServer(ManagedProcess):
    """A private ``rabbitmq-server`` (Debian's package) on free ports, in its own directory.

    Run as root, the package's wrapper drops to the ``rabbitmq`` user, so the directory is handed to it.
    ``restart()`` stops the node the way an operator does (``rabbitmqctl stop``) and starts it again on the
    same data: durable queues and persistent messages survive it.
    """

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin:/sbin")
        if binary is None:
            raise ServerUnavailable(
                "rabbitmq-server is not installed: run `scripts/bootstrap.sh dev` (it installs it with apt)"
            )
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"wft{self.port}@localhost"
        self.ctl = str(Path(binary).with_name("rabbitmqctl"))
        # Its own top directory: the node runs as the ``rabbitmq`` user, who cannot enter a root-only
        # test directory. ``remove()`` deletes it.
        base = Path(tempfile.mkdtemp(prefix="wft-rabbitmq-"))
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        )
        self.base = base
        super().__init__([binary], workdir, f"rabbitmq-{self.port}", env=env)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "plugins").write_text("[].\n")
        # Unacknowledged messages wait for their countdown in the worker: RabbitMQ's default consumer
        # timeout (30 min) would close the channel under a long one (see the README's reliability notes).
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nconsumer_timeout = 7200000\n"
        )
        if os.geteuid() == 0:
            shutil.chown(self.base, "rabbitmq", "rabbitmq")
            for path in self.base.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        super().start()
        try:
            wait_until(lambda: port_open(self.port), timeout=60, interval=0.2, what=f"RabbitMQ, {self.port}")
        except TimeoutError as exc:
            raise ServerUnavailable(f"rabbitmq-server did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop = [self.ctl, "-n", self.nodename, "stop"]
            subprocess.run(stop, capture_output=True, timeout=60, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        super().stop(sig, timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        """Delete the node's data (after ``stop``)."""
        shutil.rmtree(self.base, ignore_errors=True)


def run_in_spawned_interpreter(scenario: Callable[..., None], *args: object, timeout: float = 120) -> None:
    """Run ``scenario(*args)`` in a freshly spawned interpreter, which then forks as the scenario says.

    The test session's own process has threads left by other tests (servers, proxies); a child forked from
    it can inherit a lock one of them held. A clean parent keeps the fork behaviour under test, and only
    that. Fails the test if the scenario does not finish with exit code 0.
    """
    runner = multiprocessing.get_context("spawn").Process(target=scenario, args=args)
    runner.start()
    runner.join(timeout)
    assert runner.exitcode == 0, f"the scenario failed (exit code {runner.exitcode}); its output is above"
