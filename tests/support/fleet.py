"""What tests that run real workers share: fresh per-process clients, the producer, workers to start.

Imports of project code happen inside the functions: ``tests/conftest.py`` imports this module before the
session's Redis is started and the settings point at it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.workers import WorkerProcess

if TYPE_CHECKING:
    from celery import Celery

StartWorker = Callable[..., WorkerProcess]

#: One worker per queue group, as a deployment runs them.
QUEUE_GROUPS = [["workflow_execution"], ["indexing_tasks", "vector_tasks", "analytics_tasks", "dead_letter"]]


def reset_process_clients() -> None:
    """Read the settings again and close and forget every per-process object built from the old ones."""
    from config import reload_settings
    from fabric import registry

    reload_settings()
    registry.reset_all()


def worker_starter(workdir: Path, app: Celery) -> tuple[StartWorker, Callable[[], None]]:
    """``start(queues, wait=True, **WorkerProcess options)`` and ``stop_all()`` for the workers it started."""
    started: list[WorkerProcess] = []

    def start(queues: list[str], wait: bool = True, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(workdir, queues, **kwargs)
        worker.start()
        started.append(worker)
        if wait:
            worker.wait_ready(app, timeout=60)
        return worker

    def stop_all() -> None:
        for worker in started:
            worker.stop()

    return start, stop_all


def run_fleet(workdir: Path, app: Celery, env: dict[str, str] | None = None) -> Iterator[list[WorkerProcess]]:
    """A fixture body: one two-process worker per queue group (``env`` added to their environment), ready,
    stopped afterwards."""
    from config.queues import QUEUES

    assert {queue for group in QUEUE_GROUPS for queue in group} == set(QUEUES), "a queue nobody consumes"
    start, stop_all = worker_starter(workdir, app)
    try:
        workers = [
            start(group, wait=False, concurrency=2, name=f"fleet{i}", env=env)
            for i, group in enumerate(QUEUE_GROUPS)
        ]
        for worker in workers:
            worker.wait_ready(app, timeout=60)
        yield workers
    finally:
        stop_all()
