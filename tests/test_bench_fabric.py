from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import fabric
from config import get_settings


def test_lean_configuration_is_celerys_reliable_tasks_setup_not_ours() -> None:
    from bench.fabric_tasks import lean_configuration

    conf = lean_configuration("redis://127.0.0.1:1/0")
    assert conf["broker_url"] == conf["result_backend"] == "redis://127.0.0.1:1/0"
    assert (conf["task_serializer"], conf["result_serializer"], conf["accept_content"]) == (
        "json",
        "json",
        ["json"],
    )
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert not conf["task_ignore_result"]
    assert not conf["worker_send_task_events"] and not conf["task_send_sent_event"]
    # None of what our settings add: STARTED state, extended results, ten priority lists, own queues.
    for ours in ("task_track_started", "result_extended", "broker_transport_options", "task_queues"):
        assert ours not in conf


def test_the_lean_worker_runs_without_task_events(tmp_path: Path) -> None:
    from tests.support.workers import WorkerProcess

    assert "-E" in WorkerProcess(tmp_path, ["celery"]).argv  # every other caller keeps its events
    assert "-E" not in WorkerProcess(tmp_path, ["celery"], events=False).argv


@pytest.mark.slow
def test_fabric_benchmark_smoke() -> None:
    before = os.environ["REDIS_URL"]
    results = fabric.run(100)
    assert os.environ["REDIS_URL"] == before  # the benchmark's private Redis does not leak into settings
    assert get_settings().redis_url == before
    assert set(results) == {"lean", "bare", "ours"}
    for rates in results.values():
        assert rates.enqueue > 0
        assert rates.drain > 0
        assert rates.main_ms >= 0 and rates.pool_ms >= 0  # CPU clock ticks are 10 ms: 0 is possible here
    text = fabric.report(results, 100)
    assert "worker main CPU ms/msg" in text
    assert "ratio ours/lean (target >= 0.85)" in text
    assert "ratio ours/bare" in text
    assert "lean Celery" in text
