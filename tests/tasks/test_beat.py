"""Celery beat as the fleet runs it: real ``celery beat`` processes with the project's configuration
(celery-redbeat: the schedule and its last run times in Redis, one lock), sending to the session Redis.

No worker consumes ``analytics_tasks`` here: every message beat sends stays in the queue, and a sampler
thread notes when each one first appears, so the tests see exactly what was sent and when.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.producer import MessageQueue
from tasks.maintenance import EXPIRE_TASK, RECONCILE_TASK
from tests.support.servers import ManagedProcess, wait_until
from tests.support.workers import REPO_ROOT

QUEUE = "analytics_tasks"
# A message seen this long before its entry was due counts as early (the sampler polls every 20 ms and a
# send is stamped in Redis a few ms after beat decides it).
TOLERANCE = 0.25


class Sends:
    """Polls every priority list of ``analytics_tasks`` (kombu's own names for them) and records the first
    time each message id was seen, with its task name."""

    def __init__(self, mq: MessageQueue) -> None:
        self._mq = mq
        self._seen: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _lists(self) -> list[str]:
        with self._mq.app.connection_for_read() as conn:
            channel = conn.default_channel
            return [channel._q_for_pri(QUEUE, level) for level in channel.priority_steps]

    def _run(self) -> None:
        client = self._mq.redis_client
        names = self._lists()
        while not self._stop.is_set():
            now = time.time()
            for name in names:
                for raw in client.lrange(name, 0, -1):
                    headers = json.loads(raw)["headers"]
                    with self._lock:
                        self._seen.setdefault(headers["id"], (now, headers["task"]))
            time.sleep(0.02)

    def __enter__(self) -> Sends:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def times(self, task: str) -> list[float]:
        """When each message of ``task`` was first seen, in order."""
        with self._lock:
            return sorted(t for t, name in self._seen.values() if name == task)

    def count(self, task: str) -> int:
        return len(self.times(task))


class Beat(ManagedProcess):
    """``celery -A tasks.app beat`` as deploy/ runs it (no schedule file: the scheduler is configured)."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str]) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
        full_env.update(env)
        super().__init__(
            [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "-l", "INFO"],
            workdir,
            name,
            env=full_env,
        )

    def holds_lock(self) -> bool:
        return "beat: Acquired lock" in self.log_path.read_text(errors="replace")


@pytest.fixture
def beats(tmp_path: Path) -> Iterator[list[Beat]]:
    started: list[Beat] = []
    yield started
    for beat in started:
        beat.stop()


def _start(beats: list[Beat], tmp_path: Path, env: dict[str, str]) -> Beat:
    beat = Beat(tmp_path, f"beat-{uuid.uuid4().hex[:6]}", env)
    beat.start()
    beats.append(beat)
    return beat


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_a_restarted_beat_keeps_the_last_run_times(
    mq: MessageQueue, beats: list[Beat], tmp_path: Path
) -> None:
    expire, reconcile = 3.0, 8.0
    env = {"MAINTENANCE_EXPIRE_INTERVAL": str(expire), "MAINTENANCE_RECONCILE_INTERVAL": str(reconcile),
           "BEAT_LOCK_TIMEOUT": "5"}  # fmt: skip
    with Sends(mq) as sends:
        first = _start(beats, tmp_path, env)
        wait_until(lambda: sends.count(RECONCILE_TASK) >= 1, timeout=30,
                   what=f"the first beat to send the reconciliation\n{first.log_tail()}")  # fmt: skip
        # Restart 3 s after the reconciliation was sent: a beat that had forgotten it (a fresh schedule file,
        # as in a new container) would wait a whole interval from its own start, not from the last run.
        time.sleep(max(0.0, 3 - (time.time() - sends.times(RECONCILE_TASK)[-1])))
        first.stop()
        restarted_at = time.time()
        last = {
            task: max(t for t in sends.times(task) if t <= restarted_at)
            for task in (EXPIRE_TASK, RECONCILE_TASK)
        }
        second = _start(beats, tmp_path, env)
        for task, interval in ((EXPIRE_TASK, expire), (RECONCILE_TASK, reconcile)):
            wait_until(lambda task=task: sends.times(task)[-1] > restarted_at, timeout=30,  # type: ignore[misc]
                       what=f"the restarted beat to send {task}\n{second.log_tail()}")  # fmt: skip
            next_send = min(t for t in sends.times(task) if t > restarted_at)
            assert next_send >= last[task] + interval - TOLERANCE, f"{task} sent early after the restart"
        next_reconcile = min(t for t in sends.times(RECONCILE_TASK) if t > restarted_at)
        # Due 5 s after the restart; with its last run forgotten it would come 8 s (or more) after it.
        assert next_reconcile < restarted_at + reconcile - 1, "the restart reset the last run time"
    for task, interval in ((EXPIRE_TASK, expire), (RECONCILE_TASK, reconcile)):
        assert min(_gaps(sends.times(task))) >= interval - TOLERANCE, sends.times(task)


def test_two_beats_send_each_entry_once_per_interval_and_the_standby_takes_over(
    mq: MessageQueue, beats: list[Beat], tmp_path: Path
) -> None:
    expire, reconcile, lock_timeout = 2.0, 3.0, 5
    env = {"MAINTENANCE_EXPIRE_INTERVAL": str(expire), "MAINTENANCE_RECONCILE_INTERVAL": str(reconcile),
           "BEAT_LOCK_TIMEOUT": str(lock_timeout)}  # fmt: skip
    with Sends(mq) as sends:
        pair = [_start(beats, tmp_path, env), _start(beats, tmp_path, env)]
        wait_until(lambda: any(b.holds_lock() for b in pair), timeout=30, what="one beat to take the lock")
        window_start = time.time()
        wait_until(lambda: sends.count(EXPIRE_TASK) >= 6 and sends.count(RECONCILE_TASK) >= 4, timeout=60,
                   what="six expiry and four reconcile sends")  # fmt: skip
        window = time.time() - window_start
        active = [b for b in pair if b.holds_lock()]
        assert len(active) == 1, "both beats hold the lock"
        standby = next(b for b in pair if b is not active[0])
        assert standby.alive(), standby.log_tail()
        for task, interval in ((EXPIRE_TASK, expire), (RECONCILE_TASK, reconcile)):
            times = sends.times(task)
            assert min(_gaps(times)) >= interval - TOLERANCE, f"{task} sent twice in one interval: {times}"
            assert len(times) <= window / interval + 2

        # The running beat dies without releasing its lock: the standby takes over once the lock expires.
        assert active[0].proc is not None
        os.killpg(active[0].proc.pid, signal.SIGKILL)
        active[0].proc.wait(10)
        killed_at = time.time()
        counts = {task: sends.count(task) for task in (EXPIRE_TASK, RECONCILE_TASK)}
        wait_until(standby.holds_lock, timeout=lock_timeout * 3,
                   what=f"the standby to take the lock\n{standby.log_tail()}")  # fmt: skip
        # Lock expiry, plus one retry period of the standby (a fifth of the timeout), plus one interval.
        wait_until(lambda: all(sends.count(t) >= counts[t] + 2 for t in counts), timeout=lock_timeout * 4,
                   what=f"the standby to send every entry again\n{standby.log_tail()}")  # fmt: skip
        first_after = min(t for t in sends.times(EXPIRE_TASK) if t > killed_at)
        assert first_after - killed_at <= lock_timeout + lock_timeout / 5 + expire + 1
        for task, interval in ((EXPIRE_TASK, expire), (RECONCILE_TASK, reconcile)):
            times = sends.times(task)
            assert min(_gaps(times)) >= interval - TOLERANCE, f"{task} sent twice in one interval: {times}"
