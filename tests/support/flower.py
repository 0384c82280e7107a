"""Flower for tests: started as ``wft run`` and the deploy files start it (``celery -A tasks.app flower
--conf=deploy/flower/flowerconfig.py``, see :func:`cli.processes.flower_argv`), with its settings from the
environment, on 127.0.0.1 and a port of its own."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cli.processes import flower_argv
from tests.support.servers import ManagedProcess, free_port, wait_until
from tests.support.workers import REPO_ROOT


class FlowerServer(ManagedProcess):
    """A real Flower. ``env`` overrides settings (``FLOWER_STATE_SAVE_INTERVAL``, ...); ``argv`` replaces
    the command (to run Flower some other way, for comparison; Flower then takes its port and credentials
    from ``FLOWER_PORT`` and ``FLOWER_BASIC_AUTH``). Credentials: :attr:`auth`."""

    def __init__(
        self,
        workdir: Path,
        data_dir: Path,
        env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.auth = ("ops", "flower-" + uuid.uuid4().hex)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
        # The settings the config file reads, and (for a Flower run without it) Flower's own variables.
        user, password = self.auth
        full_env.update({"DATA_DIR": str(data_dir), "FLOWER_PORT": str(self.port), "FLOWER_USER": user,
                         "FLOWER_PASSWORD": password, "FLOWER_BASIC_AUTH": f"{user}:{password}",
                         **(env or {})})  # fmt: skip
        command = list(argv) if argv is not None else flower_argv()
        super().__init__([*command, "--address=127.0.0.1"], workdir, f"flower-{self.port}", env=full_env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"Flower exited:\n{self.log_tail()}")
            return httpx.get(f"{self.url}/healthcheck", timeout=2).status_code == 200

        wait_until(
            healthy, timeout=60, interval=0.2, what=f"Flower to answer /healthcheck\n{self.log_tail()}"
        )

    def kill9(self) -> None:
        """``kill -9``: Flower gets no chance to save its state."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET ``path`` with the credentials."""
        return httpx.get(self.url + path, auth=self.auth, params=params, timeout=30)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """``/api/tasks``: task id -> Flower's record of it."""
        response = self.get("/api/tasks", limit=10_000)
        response.raise_for_status()
        tasks: dict[str, dict[str, Any]] = response.json()
        return tasks

    def dashboard_workers(self) -> dict[str, bool]:
        """The workers the dashboard lists (``/workers?json=1``), hostname -> online."""
        response = self.get("/workers", json=1)
        response.raise_for_status()
        return {w["hostname"]: bool(w["status"]) for w in response.json()["data"]}

    def metric_workers(self) -> set[str]:
        """Workers named by any sample of Flower's ``/metrics`` (which needs no credentials)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {
            sample.labels["worker"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "worker" in sample.labels
        }
