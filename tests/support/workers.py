"""Celery workers for tests: real ``celery worker`` subprocesses (for tests that kill workers) and helpers."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from celery import Celery

from tests.support.servers import ManagedProcess, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess(ManagedProcess):
    """``celery -A tasks.app worker`` in a subprocess, consuming ``queues``, with the test tasks loaded.

    ``events`` passes ``-E`` (task events, which Flower and the event tests need); ``events=False`` runs the
    worker as a stock Celery deployment would, sending no task events.
    """

    def __init__(
        self,
        workdir: Path,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        name: str | None = None,
        env: dict[str, str] | None = None,
        pool: str = "prefork",
        extra_args: Iterable[str] = (),
        loglevel: str = "INFO",
        app: str = "tasks.app",
        include: str = "tests.support.tasks",
        events: bool = True,
    ) -> None:
        self.nodename = f"{name or 'w-' + uuid.uuid4().hex[:8]}@localhost"
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), "-P", pool, "-n", self.nodename,
            "--without-gossip", "--without-mingle", "--without-heartbeat", *(["-E"] if events else []),
            "-l", loglevel,
            *(["-I", include] if include else []), *extra_args,
        ]  # fmt: skip
        super().__init__(argv, workdir, self.nodename.split("@")[0], env=full_env)

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> WorkerProcess:
        def answered() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker {self.nodename} exited:\n{self.log_tail()}")
            return bool(app.control.ping(destination=[self.nodename], timeout=0.5))

        try:
            wait_until(answered, timeout=timeout, interval=0.2, what=f"worker {self.nodename} to answer ping")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from exc
        return self

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def kill9(self) -> None:
        """``kill -9`` of the main worker process and its pool: nothing gets to ack or requeue."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
