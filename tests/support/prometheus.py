"""A private Prometheus for tests (Debian's ``prometheus``, installed by ``scripts/bootstrap.sh dev``): the
deploy's scrape configuration with its targets rewritten to local addresses, on a free port, in its own
directory, queried through its HTTP API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.servers import ManagedProcess, ServerUnavailable, free_port, wait_until


def local_config(config: dict[str, Any], targets: dict[str, str], interval: str = "1s") -> dict[str, Any]:
    """``config`` (a parsed prometheus.yml) with every job's targets replaced by ``targets[job_name]`` and the
    scrape and evaluation intervals shortened to ``interval``. Raises KeyError naming a job of the deploy
    that ``targets`` does not cover, so a job added to the deploy cannot go untested."""
    out = dict(config)
    out["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise KeyError(f"the deploy scrapes job {name!r}, which the test has no local target for")
        jobs.append({**job, "scrape_interval": interval, "static_configs": [{"targets": [targets[name]]}]})
    out["scrape_configs"] = jobs
    return out


class PrometheusServer(ManagedProcess):
    """``prometheus`` with ``config`` (written to ``workdir/prometheus.yml``, beside the ``rules`` files given
    as name -> text) on 127.0.0.1 and a free port."""

    def __init__(self, workdir: Path, config: dict[str, Any], rules: dict[str, str] | None = None) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServerUnavailable("prometheus is not installed: run scripts/bootstrap.sh dev")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        for name, text in (rules or {}).items():
            (workdir / name).write_text(text)
        self.port = free_port()
        argv = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        super().__init__(argv, workdir, "prometheus")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            if not self.alive():
                raise ServerUnavailable(f"prometheus exited:\n{self.log_tail()}")
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=60, interval=0.2, what="prometheus to be ready")

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; raises AssertionError with Prometheus' error otherwise."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (a list of ``{"metric": ..., "value": [t, "v"]}``)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result
