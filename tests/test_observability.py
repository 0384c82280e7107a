"""Operating the fleet with the deploy's own files, against real parts: a real Prometheus with the deploy's
scrape configuration (targets rewritten to local processes) scraping ``python -m services.metrics`` and
Flower, the KEDA ScaledObjects' queries evaluated in it against a broker filled through the real producer,
and the Grafana dashboard's and the alert rules' metric names found in real scrapes."""

from __future__ import annotations

import json
import math
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from config.queues import QUEUES, WORK_QUEUES
from fabric.producer import MessageQueue
from tests.support.fleet import StartWorker
from tests.support.prometheus import PrometheusServer, local_config
from tests.support.servers import ManagedProcess, free_port, port_open, wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess
from tests.test_flower import FlowerProcess
from workflows.pipelines import Pipelines

DEPLOY = REPO_ROOT / "deploy"
#: kombu's Redis transport: ``<queue>`` holds priority level 0, ``<queue>\x06\x16<level>`` the others.
PRIORITY_SEP = "\x06\x16"
#: Series Prometheus makes itself, not scraped from a target.
PROMETHEUS_OWN = {"up"}


@dataclass
class Targets:
    metrics: str
    flower: str

    def by_job(self) -> dict[str, str]:
        return {"wft": self.metrics, "flower": self.flower}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Targets]:
    """The deploy's scrape targets, run here as the deploy runs them: the metrics service and Flower."""
    workdir = tmp_path_factory.mktemp("targets")
    port = free_port()
    metrics = ManagedProcess(
        [sys.executable, "-m", "services.metrics", "--addr", "127.0.0.1", "--port", str(port)],
        workdir,
        "metrics",
    )
    metrics.workdir = REPO_ROOT  # run from the repository root, where the packages are
    metrics.log_path = workdir / "metrics.log"
    flower = FlowerProcess(workdir / "flower", workdir / "flower.db", free_port())
    metrics.start()
    try:
        wait_until(lambda: port_open(port), timeout=30, what="python -m services.metrics to listen")
        flower.start()
        yield Targets(metrics=f"127.0.0.1:{port}", flower=f"127.0.0.1:{flower.port}")
    finally:
        flower.stop()
        metrics.stop()


def _deploy_config(source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The scrape configuration and rule files of the compose stack or of the Kubernetes manifests."""
    if source == "compose":
        return (
            yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text()),
            {"alerts.yml": (DEPLOY / "prometheus" / "alerts.yml").read_text()},
        )
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "prometheus.yaml").read_text()) if d]
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    return yaml.safe_load(data["prometheus.yml"]), {"alerts.yml": data["alerts.yml"]}


def _start_prometheus(workdir: Path, source: str, targets: Targets) -> PrometheusServer:
    config, rules = _deploy_config(source)
    server = PrometheusServer(workdir, local_config(config, targets.by_job()), rules)
    server.start()
    return server


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, targets: Targets) -> Iterator[PrometheusServer]:
    server = _start_prometheus(tmp_path_factory.mktemp("prometheus"), "compose", targets)
    yield server
    server.stop()


def _scalar(server: PrometheusServer, expr: str) -> float | None:
    result = server.query(expr)
    if not result:
        return None
    assert len(result) == 1, f"{expr} gave {len(result)} series; KEDA needs exactly one"
    return float(result[0]["value"][1])


# --- scrape targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_prometheus_with_the_deploy_configuration_scrapes_every_job_and_loads_the_alerts(
    source: str, targets: Targets, tmp_path: Path
) -> None:
    config, _ = _deploy_config(source)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"wft", "flower"}
    server = _start_prometheus(tmp_path / "prometheus", source, targets)
    try:

        def every_job_up() -> bool:
            up = {s["metric"]["job"]: s["value"][1] for s in server.query("up")}
            return up == dict.fromkeys(jobs, "1")

        wait_until(every_job_up, timeout=30, interval=0.5, what=f"up == 1 for every job of {sorted(jobs)}")
        # The fleet's numbers and Flower's arrived, not just a 200.
        assert _scalar(server, 'max(wft_metrics_redis_up{job="wft"})') == 1
        assert {s["metric"]["queue"] for s in server.query('wft_queue_depth{job="wft"}')} == set(QUEUES)
        for job in jobs:
            samples = _scalar(server, f'scrape_samples_scraped{{job="{job}"}}')
            assert samples is not None and samples > 0, job
        groups = server.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} == {
            "WftNoWorkerOnline", "WftQueueGrowing", "WftDeadLettersArriving", "WftWorkflowFailureRate",
            "WftMetricsRedisDown", "WftScrapeTargetDown",
        }  # fmt: skip
        wait_until(
            lambda: all(r["health"] == "ok" for g in server.api("rules")["groups"] for r in g["rules"]),
            timeout=15, interval=0.5, what="every rule to be evaluated without error",
        )  # fmt: skip
    finally:
        server.stop()


# --- autoscaling -----------------------------------------------------------------------------------------


def _scaled_objects() -> list[tuple[dict[str, Any], list[str]]]:
    """Each KEDA ScaledObject with the queues its target Deployment's workers consume (``-Q``)."""
    docs = [
        d
        for p in sorted((DEPLOY / "k8s").glob("worker-*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    out = []
    for obj in (d for d in docs if d["kind"] == "ScaledObject"):
        command = deployments[obj["spec"]["scaleTargetRef"]["name"]]["spec"]["template"]["spec"][
            "containers"
        ][0]["command"]
        out.append((obj, command[command.index("-Q") + 1].split(",")))
    assert len(out) == 2
    return out


def true_depth(client: redis.Redis, queue: str) -> int:
    """Every message waiting for ``queue`` in the broker, read list by list: all ten priority levels."""
    names = [queue, *(f"{queue}{PRIORITY_SEP}{level}" for level in range(1, 10))]
    return sum(int(client.llen(name)) for name in names)


def test_each_scaler_reads_the_true_depth_of_its_group_every_queue_and_every_priority(
    mq: MessageQueue, redis_client: redis.Redis, start_worker: StartWorker, prometheus: PrometheusServer
) -> None:
    # dead_letter takes no new messages from producers: fill it as the fleet does, with permanent failures
    # dead-lettered by a worker that consumes indexing_tasks and leaves dead_letter to nobody.
    tag = uuid.uuid4().hex[:8]
    worker = start_worker(["indexing_tasks"])
    for priority in (0, 5, 9):
        mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "fail": "permanent"}, priority=priority)
    wait_until(lambda: true_depth(redis_client, "dead_letter") == 3, timeout=30, what="3 dead letters queued")
    # A probe's dead letter is queued before its own message is acknowledged: stopping the worker in
    # between would put that message back on indexing_tasks.
    wait_until(lambda: redis_client.hlen("unacked") == 0, timeout=30, what="the probes to be acknowledged")
    worker.stop()

    # Every work queue, at the default priority and at each of 0..9, a different number of each.
    sent = dict.fromkeys(QUEUES, 0)
    sent["dead_letter"] = 3
    for q_index, queue in enumerate(WORK_QUEUES):
        for p_index, priority in enumerate([None, *range(10)]):
            for _ in range(1 + (q_index + p_index) % 3):
                mq.enqueue(queue, {"action": "probe", "tag": tag}, priority=priority)
                sent[queue] += 1
    for queue in QUEUES:
        assert true_depth(redis_client, queue) == sent[queue], queue
    # What the old scalers read, the base list alone, misses most of it.
    assert sum(int(redis_client.llen(q)) for q in QUEUES) < sum(sent.values()) / 3

    for obj, queues in _scaled_objects():
        (trigger,) = obj["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        expected = sum(true_depth(redis_client, q) for q in queues)
        assert expected == sum(sent[q] for q in queues) > 0

        def reads_true_depth(query: str = query, expected: int = expected) -> bool:
            return _scalar(prometheus, query) == expected

        wait_until(reads_true_depth, timeout=30, interval=0.5, what=f"{query} to read {expected}")
        # What KEDA does with it: one replica per `threshold` waiting messages, within the bounds.
        threshold = float(trigger["metadata"]["threshold"])
        spec = obj["spec"]
        replicas = min(max(math.ceil(expected / threshold), spec["minReplicaCount"]), spec["maxReplicaCount"])
        assert spec["minReplicaCount"] <= replicas <= spec["maxReplicaCount"]


def test_a_scaler_query_is_empty_not_zero_when_the_metrics_are_missing(prometheus: PrometheusServer) -> None:
    # ignoreNullValues "false" turns an empty answer into a KEDA error, hence the fallback replicas: shown
    # here with the same query shape on a queue no target reports.
    for obj, _ in _scaled_objects():
        assert obj["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] == "false"
        assert obj["spec"]["fallback"]["replicas"] >= obj["spec"]["minReplicaCount"]
    assert _scalar(prometheus, 'sum(max by (queue) (wft_queue_depth{queue=~"no_such_queue"}))') is None


# --- dashboard and alert rules ---------------------------------------------------------------------------


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parsed syntax tree."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "wft.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    out = []
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        out += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return out


def _alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _scraped_names(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def _workflow(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "name": f"dashboard {workflow_id}",
        "definition": {
            "nodes": [
                {"id": "in", "type": "input", "data": {"required": ["x"]}},
                {"id": "out", "type": "output", "data": {}},
            ],
            "edges": [{"source": "in", "target": "out"}],
        },
    }


def test_every_dashboard_panel_and_alert_queries_metrics_that_real_scrapes_return(
    mq: MessageQueue, tmp_path: Path, targets: Targets, prometheus: PrometheusServer
) -> None:
    # A worker on every queue with heartbeats on (Flower marks workers online from them), short retries.
    worker = WorkerProcess(
        tmp_path / "workers", QUEUES, concurrency=2, env={"MAX_RETRIES": "1", "RETRY_BACKOFF_MAX": "1"}
    )
    worker.argv.remove("--without-heartbeat")
    worker.start()
    try:
        worker.wait_ready(mq.app, timeout=60)
        # Work that makes every metric exist: executions that complete and fail, a retry, dead letters, a
        # message held until its countdown.
        workflow_id = f"dash-{uuid.uuid4().hex[:8]}"
        pipelines = Pipelines(queue=mq)
        pipelines.register_workflow(_workflow(workflow_id))
        runs = [
            pipelines.request_execution(workflow_id, {"x": 1}),
            pipelines.request_execution(workflow_id, {}),
        ]
        tag = uuid.uuid4().hex[:8]
        failing = [
            mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "fail": "transient"}),
            mq.enqueue("indexing_tasks", {"action": "probe", "tag": tag, "fail": "permanent"}),
        ]
        mq.enqueue("analytics_tasks", {"action": "probe", "tag": tag}, delay_seconds=300)
        wait_until(
            lambda: {mq.get_status(m)["state"] for m in [*runs, *failing]} == {"SUCCESS", "DEAD_LETTERED"},
            timeout=60, what="the executions to finish and the failing probes to be dead-lettered",
        )  # fmt: skip
        metrics_url, flower_url = f"http://{targets.metrics}/metrics", f"http://{targets.flower}/metrics"
        wanted = {"wft_dead_letters_total", "wft_workflow_step_duration_seconds_bucket"}
        wait_until(lambda: wanted <= _scraped_names(metrics_url), timeout=30, what="the dead letters counted")
        wait_until(
            lambda: "flower_worker_number_of_currently_executing_tasks" in _scraped_names(flower_url),
            timeout=30, what="Flower to see the worker's heartbeat",
        )  # fmt: skip
        scraped = _scraped_names(metrics_url) | _scraped_names(flower_url)
        assert "flower_worker_online" in scraped

        for where, expressions, allowed in (
            ("dashboard panel", _dashboard_expressions(), scraped),
            ("alert", _alert_expressions(), scraped | PROMETHEUS_OWN),
        ):
            for title, expr in expressions:
                names = _metric_names(expr)
                assert names, f"{where} {title!r} selects no metric: {expr}"
                missing = names - allowed
                assert not missing, f"{where} {title!r} queries {sorted(missing)}, which no scrape returns"
                # The real Prometheus accepts the expression too.
                prometheus.query(expr)
    finally:
        worker.stop()
