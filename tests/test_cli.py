"""The run command's own code path and the operator CLI, against real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from tests.support.servers import free_port, port_open, wait_until
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
        from fabric.producer import get_message_queue, reset_message_queue

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


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, as pid -> its start time (field 22 of /proc/PID/stat), so a pid
    the kernel hands out again later is not mistaken for the same process."""
    parents: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents.setdefault(int(fields[1]), []).append(pid)
        started[pid] = fields[19]
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _survivors(processes: dict[int, str]) -> list[str]:
    """The processes of ``processes`` still running (zombies count as gone), with their command lines."""
    alive = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            alive.append(f"{pid}: {cmdline}")
    return alive


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "after"),
    [(signal.SIGTERM, "Running. Press Ctrl-C"), (signal.SIGHUP, "==> worker ready")],
    ids=["SIGTERM-while-serving", "SIGHUP-during-the-demo"],
)
def test_run_stops_every_process_it_started_on_a_stop_signal(
    tmp_path: Path, sig: signal.Signals, after: str
) -> None:
    redis_port, flower_port, api_port = free_port(), free_port(), free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "DATA_DIR": str(tmp_path / "var"),
           "FLOWER_PORT": str(flower_port), "API_PORT": str(api_port)}  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--concurrency", "2"], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    started: dict[int, str] = {}
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: any(after in line for line in lines) or run.poll() is not None, timeout=300,
                   interval=0.2, what=f"`wft run` to print {after!r}")  # fmt: skip
        assert run.poll() is None, "".join(lines)
        # Everything is up: Redis, the worker and its pool, beat, the API and Flower.
        wait_until(lambda: all(port_open(p) for p in (redis_port, flower_port, api_port)), timeout=60,
                   what="Redis, Flower and the API to listen")  # fmt: skip
        started.update(_descendants(run.pid))
        commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in started)
        for role in ("redis-server", "worker", "beat", "flower", "api"):
            assert role in commands, f"{role} is not running under `wft run`"
        assert len(started) >= 7  # five roles, and the worker's two pool processes

        run.send_signal(sig)
        # Within the warm shutdown (TASK_TIME_LIMIT + 30 s); idle, it takes a few seconds.
        assert run.wait(timeout=360 + 30) == 0
        reader.join(10)
        output = "".join(lines)
        assert f"{sig.name}: stopping everything" in output, output[-3000:]
        assert _survivors(started) == []
        for port in (redis_port, flower_port, api_port):
            assert not port_open(port)
    finally:
        # Whatever the outcome, leave nothing behind on the machine.
        started.update(_descendants(run.pid) if run.poll() is None else {})
        if run.poll() is None:
            run.kill()
            run.wait(10)
        for survivor in _survivors(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(survivor.split(":")[0]), signal.SIGKILL)
        reader.join(10)
        run.stdout.close()  # type: ignore[union-attr]


def test_version_prints_the_project_version() -> None:
    from importlib import metadata

    done = wft("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wft {metadata.version('workflow-tasks')}"


def test_development_secrets_outside_development_exit_78_naming_them() -> None:
    done = wft("health", env={"ENVIRONMENT": "production", "FLOWER_PASSWORD": "dev-insecure-change-me"})
    assert done.returncode == 78, done.stderr
    assert "FLOWER_PASSWORD" in done.stderr
    assert "set them to secret values of your own" in done.stderr
    assert "Traceback" not in done.stderr
