"""The run command's own code path and the operator CLI, against real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.servers import free_port, port_open
from tests.support.workers import REPO_ROOT, WorkerProcess


def wft(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_run_starts_redis_workers_and_flower_runs_the_demo_and_stops_everything(tmp_path: Path) -> None:
    redis_port, flower_port, api_port = free_port(), free_port(), free_port()
    env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "DATA_DIR": str(tmp_path / "var"),
           "FLOWER_PORT": str(flower_port), "API_PORT": str(api_port)}  # fmt: skip
    done = wft("run", "--exit-after-demo", "--concurrency", "2", env=env, timeout=400)
    print(done.stdout[-4000:], done.stderr[-4000:])
    assert done.returncode == 0
    out = done.stdout
    assert "starting redis-server" in out  # none answered on that port, so the command started one
    assert "== Executions by status" in out
    assert "completed" in out and "failed" in out
    assert "inventory-restock" in out.split("== Text search")[1].split("==")[0]
    assert "customer-onboarding" in out.split("== Similar workflows")[1].split("==")[0]
    assert f"http://localhost:{flower_port}" in out
    assert f"http://localhost:{api_port}/docs" in out
    for line in out.split("== Queues")[1].split("==")[0].strip().splitlines():
        assert "pending     0" in line
    # Nothing it started is left running.
    assert not port_open(redis_port)
    assert not port_open(flower_port)
    assert not port_open(api_port)
    assert (tmp_path / "var" / "redis" / "appendonlydir").exists()


def test_cli_subcommands_against_a_running_worker(redis_client: redis.Redis, tmp_path: Path) -> None:
    bad = wft("enqueue", "workflow_execution", '{"input_data": {}}')
    assert bad.returncode == 2
    assert "payload.workflow_id: Field required" in bad.stderr
    not_json = wft("enqueue", "indexing_tasks", "{nope")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr

    log = {"action": "index_log", "entry": {"timestamp": "2024-01-01T00:00:00Z", "level": "info",
           "message": "cli smoke entry", "service": "cli"}}  # fmt: skip
    sent = wft("enqueue", "indexing_tasks", json.dumps(log), "--priority", "3")
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    status = json.loads(wft("status", message_id).stdout)
    assert status["state"] == "PENDING"

    health = wft("health")
    assert health.returncode == 0
    assert json.loads(health.stdout)["queues"]["indexing_tasks"]["pending"] == 1

    worker = WorkerProcess(tmp_path, ["indexing_tasks", "dead_letter"], name="cli-worker")
    worker.start()
    try:
        from services.message_queue import get_message_queue, reset_message_queue

        reset_message_queue()
        worker.wait_ready(get_message_queue().app)
        from tests.support.servers import wait_until

        wait_until(lambda: json.loads(wft("status", message_id).stdout)["state"] == "SUCCESS", timeout=60,
                   what="the log to be indexed")  # fmt: skip
        failing = wft(
            "enqueue", "indexing_tasks", json.dumps({"action": "probe", "tag": "x", "fail": "permanent"})
        )
        assert failing.returncode == 2  # the probe action exists only where tests register it
        execution = {"id": "e1", "workflow_id": "w", "status": "completed", "started_at": "not a time"}
        bad_exec = {"action": "index_execution", "execution": execution}
        refused = wft("enqueue", "indexing_tasks", json.dumps(bad_exec))
        assert refused.returncode == 2 and "started_at" in refused.stderr
    finally:
        worker.stop()
    empty = wft("dlq", "list")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    missing = wft("dlq", "replay", "no-such-id")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    assert wft("stats", "never-ran").returncode == 0
    assert wft("--help").returncode == 0
    for sub in ("run", "enqueue", "status", "dlq", "health", "stats", "worker", "demo"):
        assert wft(sub, "--help").returncode == 0
