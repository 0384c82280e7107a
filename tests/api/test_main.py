"""``python -m api`` serves the API on API_PORT: the command the run script and deployments use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from tests.api.conftest import ADMIN_KEY, API_KEYS
from tests.support.servers import ManagedProcess, free_port, wait_until
from tests.support.workers import REPO_ROOT


def test_python_m_api_serves_on_the_configured_port(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        API_PORT=str(port),
        API_KEYS=API_KEYS,
        STORAGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        PYTHONPATH=str(REPO_ROOT),
    )
    server = ManagedProcess([sys.executable, "-m", "api"], tmp_path, "api", env=env)
    server.start()
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert server.alive(), server.log_tail()
            return httpx.get(f"{base}/health", timeout=2).status_code == 200

        wait_until(answers, timeout=30, interval=0.2, what="python -m api to answer /health")
        assert httpx.get(f"{base}/queues").status_code == 401
        queues = httpx.get(f"{base}/queues", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert queues.status_code == 200
        assert len(queues.json()["queues"]) == 5
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"]
        # keys never reach the log
        assert ADMIN_KEY not in server.log_path.read_text()
    finally:
        server.stop()
