"""Flower as every deployment runs it (deploy/flower/flowerconfig.py): its state survives a ``kill -9``
up to the last periodic save, and workers that went offline leave the dashboard and the metrics.

Real Flower processes, real ``celery worker`` processes, the session Redis; Flower's API with basic auth.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from fabric.producer import MessageQueue
from tests.support.flower import FlowerServer
from tests.support.servers import ManagedProcess, wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess


@pytest.fixture
def flowers() -> Iterator[list[FlowerServer]]:
    started: list[FlowerServer] = []
    yield started
    for flower in started:
        flower.stop()


def _start(flowers: list[FlowerServer], flower: FlowerServer) -> FlowerServer:
    flowers.append(flower)
    flower.start()
    return flower


def _saved_at(data_dir: Path) -> float:
    """When Flower last wrote its state file (every dbm file of ``flower.db``), 0 if never."""
    return max((p.stat().st_mtime for p in data_dir.glob("flower.db*")), default=0.0)


def test_a_killed_flower_keeps_the_tasks_saved_before_the_kill(
    tmp_path: Path, mq: MessageQueue, flowers: list[FlowerServer]
) -> None:
    worker = WorkerProcess(tmp_path / "worker", ["indexing_tasks"], concurrency=1)
    worker.start()
    try:
        worker.wait_ready(mq.app, timeout=60)
        configured_dir, bare_dir = tmp_path / "configured", tmp_path / "bare"
        # As deployed, saving every second instead of every minute so the test waits one short interval.
        configured = FlowerServer(
            tmp_path / "flower", configured_dir, env={"FLOWER_STATE_SAVE_INTERVAL": "1000"}
        )
        # For comparison, Flower as deploy/ and `wft run` used to start it: persistent, but without the config
        # file, so without a save interval: it saves only when it exits cleanly.
        bare_argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "flower", "--persistent=True",
                     f"--db={bare_dir / 'flower.db'}"]  # fmt: skip
        bare = FlowerServer(tmp_path / "flower", bare_dir, argv=bare_argv)
        bare_dir.mkdir(parents=True)
        for flower in (configured, bare):
            _start(flowers, flower)
            # Basic auth on the API and the dashboard.
            assert httpx.get(flower.url + "/api/tasks", timeout=10).status_code == 401
            assert httpx.get(flower.url + "/", timeout=10).status_code == 401

        tag = uuid.uuid4().hex[:8]
        ids = [mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "value": i}) for i in range(5)]
        wait_until(lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in ids), timeout=60,
                   what="the probes to run")  # fmt: skip
        for flower in (configured, bare):
            wait_until(lambda f=flower: all(f.tasks().get(m, {}).get("state") == "SUCCESS" for m in ids),  # type: ignore[misc]
                       timeout=30, what=f"Flower on {flower.port} to see the probes succeed")  # fmt: skip
        seen_at = time.time()
        # One save interval later the state on disk holds them.
        wait_until(lambda: _saved_at(configured_dir) > seen_at, timeout=10, what="Flower to save its state")
        for flower in (configured, bare):
            flower.kill9()

        for flower in (configured, bare):
            flower.start()
        listed = configured.tasks()
        assert set(ids) <= set(listed), "Flower lost tasks it had saved"
        assert all(listed[m]["state"] == "SUCCESS" for m in ids)
        assert all(listed[m]["name"] == "testing.probe" for m in ids)
        # Without the configuration nothing was saved: the kill lost every task.
        assert not set(ids) & set(bare.tasks())
    finally:
        worker.stop()


class DeployedWorker(ManagedProcess):
    """A worker as deploy/ starts one (``wft worker``: task events and heartbeats on), with the test tasks."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.nodename = f"{name}@localhost"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "cli", "worker", "-Q", "indexing_tasks", "-c", "1", "--",
                "-n", self.nodename, "-I", "tests.support.tasks"]  # fmt: skip
        super().__init__(argv, workdir, name, env=env)


def test_workers_gone_offline_are_purged_from_the_dashboard_and_metrics(
    tmp_path: Path, mq: MessageQueue, flowers: list[FlowerServer]
) -> None:
    purging = _start(flowers, FlowerServer(tmp_path / "flower", tmp_path / "purging",
                                           env={"FLOWER_PURGE_OFFLINE_WORKERS": "3"}))  # fmt: skip
    keeping = _start(flowers, FlowerServer(tmp_path / "flower", tmp_path / "keeping"))  # the default: an hour
    worker = DeployedWorker(tmp_path / "worker", f"gone-{uuid.uuid4().hex[:6]}")
    worker.start()
    try:
        wait_until(lambda: mq.app.control.ping(destination=[worker.nodename], timeout=0.5), timeout=60,
                   what=f"the worker to answer\n{worker.log_tail()}")  # fmt: skip
        message = mq.enqueue("indexing_tasks", {"action": "probe", "tag": uuid.uuid4().hex[:8]})
        wait_until(lambda: mq.get_status(message)["state"] == "SUCCESS", timeout=60, what="the probe to run")
        for flower in (purging, keeping):
            wait_until(lambda f=flower: f.dashboard_workers().get(worker.nodename) is True, timeout=30,  # type: ignore[misc]
                       what=f"Flower on {flower.port} to show the worker online")  # fmt: skip
            wait_until(lambda f=flower: worker.nodename in f.metric_workers(), timeout=30,  # type: ignore[misc]
                       what="the worker's task in Flower's metrics")  # fmt: skip
    finally:
        worker.stop()  # a warm shutdown, as when autoscaling removes a worker: it says it goes offline

    wait_until(lambda: keeping.dashboard_workers().get(worker.nodename) is False, timeout=30,
               what="Flower to see the worker go offline")  # fmt: skip
    wait_until(lambda: worker.nodename not in purging.dashboard_workers(), timeout=30,
               what="the purging Flower to drop the offline worker")  # fmt: skip
    # The dashboard rounds to whole seconds, the metrics do not: the latter may need up to a second more.
    wait_until(lambda: worker.nodename not in purging.metric_workers(), timeout=10,
               what="the purging Flower to drop the offline worker's metrics")  # fmt: skip
    # Flower with the default hour still shows it, offline: the purge is the setting's doing.
    assert keeping.dashboard_workers()[worker.nodename] is False
    assert worker.nodename in keeping.metric_workers()
