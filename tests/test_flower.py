"""Flower as the run command starts it (``celery -A tasks.app flower`` with basic auth from
``FLOWER_BASIC_AUTH``, ``--persistent=True --db=...``) against the session Redis and a real worker; its task
page as headless Chromium renders it."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from config import get_settings
from fabric.producer import MessageQueue
from tests.api.browser import rendered_dom
from tests.support.servers import ManagedProcess, free_port, wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess

USER, PASSWORD = "ops", "flower-" + uuid.uuid4().hex
AUTH = (USER, PASSWORD)


class FlowerProcess(ManagedProcess):
    """``celery -A tasks.app flower`` on 127.0.0.1:``port``: by default as ``wft run`` starts it (basic auth
    from ``FLOWER_BASIC_AUTH``, ``--persistent=True --db=...``); with ``conf``, from that config file."""

    def __init__(self, workdir: Path, db: Path | None, port: int, conf: Path | None = None) -> None:
        self.port = port
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        options = [f"--conf={conf}"] if conf else ["--persistent=True", f"--db={db}"]
        if conf is None:
            env["FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks.app", "flower", f"--port={port}",
            "--address=127.0.0.1", *options,
        ]  # fmt: skip
        super().__init__(argv, workdir, f"flower-{port}", env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"Flower exited:\n{self.log_tail()}")
            return httpx.get(f"{self.url}/healthcheck", timeout=2).status_code == 200

        wait_until(healthy, timeout=60, interval=0.2, what="Flower to answer /healthcheck")


@pytest.fixture
def worker(tmp_path: Path, mq: MessageQueue) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(tmp_path / "workers", ["indexing_tasks"], concurrency=1)
    proc.start()
    proc.wait_ready(mq.app, timeout=60)
    yield proc
    proc.stop()


@pytest.fixture
def start_flower(tmp_path: Path) -> Iterator[Callable[[], FlowerProcess]]:
    db = tmp_path / "flower.db"
    port = free_port()
    started: list[FlowerProcess] = []

    def start() -> FlowerProcess:
        flower = FlowerProcess(tmp_path / "flower", db, port)
        flower.start()
        started.append(flower)
        return flower

    yield start
    for flower in started:
        flower.stop()


def succeeded_events(flower: FlowerProcess) -> float:
    """``flower_events_total{type="task-succeeded", task="testing.probe"}`` summed over workers."""
    text = httpx.get(f"{flower.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "flower_events_total"
                and labels.get("type") == "task-succeeded"
                and labels.get("task") == "testing.probe"
            ):
                total += sample.value
    return total


def tasks_listed(flower: FlowerProcess) -> dict[str, dict[str, object]]:
    response = httpx.get(f"{flower.url}/api/tasks", auth=AUTH, params={"limit": 1000}, timeout=10)
    assert response.status_code == 200
    tasks: dict[str, dict[str, object]] = response.json()
    return tasks


def test_flower_api_needs_credentials_counts_tasks_and_keeps_them_across_restarts(
    mq: MessageQueue, worker: WorkerProcess, start_flower: Callable[[], FlowerProcess]
) -> None:
    flower = start_flower()
    for path in ("/api/workers", "/api/tasks"):
        assert httpx.get(flower.url + path, timeout=10).status_code == 401
        assert httpx.get(flower.url + path, auth=(USER, "wrong"), timeout=10).status_code == 401
        assert httpx.get(flower.url + path, auth=AUTH, timeout=30).status_code == 200
    # The dashboard itself is behind the same login.
    assert httpx.get(flower.url + "/", timeout=10).status_code == 401

    before = succeeded_events(flower)
    tag = uuid.uuid4().hex[:8]
    ids = [mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "value": i}) for i in range(5)]
    wait_until(
        lambda: all(mq.get_status(m)["state"] == "SUCCESS" for m in ids), timeout=60, what="the probes to run"
    )
    wait_until(lambda: succeeded_events(flower) - before == len(ids), timeout=30,
               what="Flower's metrics to count the run's tasks")  # fmt: skip
    assert succeeded_events(flower) - before == len(ids)
    listed = tasks_listed(flower)
    assert set(ids) <= set(listed)
    assert all(listed[m]["state"] == "SUCCESS" for m in ids)

    def worker_listed() -> bool:
        # refresh=1 makes Flower inspect the workers now (its 1 s inspect timeout can miss a busy worker).
        response = httpx.get(flower.url + "/api/workers", auth=AUTH, params={"refresh": 1}, timeout=30)
        return worker.nodename in response.json()

    wait_until(worker_listed, timeout=60, interval=0.5, what=f"Flower to list {worker.nodename}")

    # --persistent: the state is saved on shutdown and loaded on start.
    flower.stop()
    flower = start_flower()
    listed = tasks_listed(flower)
    assert set(ids) <= set(listed), "Flower lost its tasks across a restart"
    assert all(listed[m]["state"] == "SUCCESS" for m in ids)


def test_flower_config_file_takes_credentials_and_state_file_from_the_settings(tmp_path: Path) -> None:
    settings = get_settings()
    flower = FlowerProcess(
        tmp_path, None, free_port(), conf=REPO_ROOT / "deploy" / "flower" / "flowerconfig.py"
    )
    flower.start()
    try:
        credentials = (settings.flower_user, settings.flower_password.get_secret_value())
        assert httpx.get(flower.url + "/api/workers", timeout=10).status_code == 401
        assert httpx.get(flower.url + "/api/tasks", auth=credentials, timeout=10).status_code == 200
        assert httpx.get(flower.url + "/metrics", timeout=10).status_code == 200
    finally:
        flower.stop()
    # Saved on shutdown where the settings say.
    assert list(settings.data_dir.glob("flower.db*"))


def test_flowers_task_page_shows_a_task_the_test_ran_in_a_browser(
    mq: MessageQueue, worker: WorkerProcess, start_flower: Callable[[], FlowerProcess], tmp_path: Path
) -> None:
    flower = start_flower()

    def probe() -> str:
        return mq.enqueue("indexing_tasks", {"action": "probe", "tag": uuid.uuid4().hex[:8], "value": 7})

    # Flower answers before its event receiver is consuming, and the events sent until then are lost: a
    # task can be missed, or recorded without its task-received event (the one naming it). Once a task
    # shows up, events flow.
    def events_flow() -> bool:
        warm_up = probe()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if warm_up in tasks_listed(flower):
                return True
            time.sleep(0.2)
        return False

    wait_until(events_flow, timeout=90, interval=0, what="Flower to receive the worker's events")
    message_id = probe()

    def listed_done() -> bool:
        task = tasks_listed(flower).get(message_id, {})
        return task.get("name") == "testing.probe" and task.get("state") == "SUCCESS"

    wait_until(listed_done, timeout=60, what="Flower to record the probe as succeeded")

    # The task table is filled by the page's own script (DataTables asking /tasks/datatable).
    dom = rendered_dom(f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}/tasks", tmp_path)
    start = dom.find(f'<tr id="{message_id}"')
    assert start >= 0, f"task {message_id} is not a row of the task table:\n{dom[-3000:]}"
    row = dom[start : dom.index("</tr>", start)]
    assert ">testing.probe<" in row
    assert ">SUCCESS<" in row
    assert worker.nodename in row
    # Without the login the page does not load at all.
    assert rendered_dom(f"{flower.url}/tasks", tmp_path, must_load=False).strip() == ""
