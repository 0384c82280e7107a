"""The deploy files, validated without a Docker engine or a cluster: schemas from PyPI validators, every
environment variable they give our processes checked against the settings, the autoscalers' queries, the
scrape targets in each deploy, and the Prometheus configuration and alert rules with ``promtool``."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pytest
import yaml

from config.queues import QUEUES
from config.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SETTINGS = {name.upper() for name in Settings.model_fields}
# Variables read by third-party processes we start, not by our settings.
FOREIGN = {"FLOWER_BASIC_AUTH"}


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        if doc:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _services(docs: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Each Kubernetes Service's name and the ports it serves."""
    return {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in docs if d["kind"] == "Service"
    }


def _queues_of_query(query: str) -> list[str]:
    """The queues a scaler query selects: the alternatives of its one ``wft_queue_depth{queue=~...}``."""
    selectors: list[Any] = []
    promql_parser.walk(
        promql_parser.parse(query),
        lambda node: selectors.append(node) if isinstance(node, promql_parser.VectorSelector) else None,
    )
    assert [s.name for s in selectors] == ["wft_queue_depth"], query
    matchers = [m for m in selectors[0].matchers.matchers if m.name == "queue"]
    assert len(matchers) == 1 and matchers[0].op == promql_parser.MatchOp.Re, query
    return str(matchers[0].value).split("|")


def test_keda_scalers_read_every_queue_of_their_group_through_prometheus() -> None:
    # The depth itself (every priority list, every queue) is checked against a filled broker and a real
    # Prometheus in tests/test_observability.py; here, that each scaler names its group's queues exactly.
    docs = _k8s_docs()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = _services(docs)
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {obj["spec"]["scaleTargetRef"]["name"] for obj in scaled} == {
        name for name in deployments if name.startswith("wft-worker-")
    }
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        container = deployments[spec["scaleTargetRef"]["name"]]["spec"]["template"]["spec"]["containers"][0]
        consumed = container["command"][container["command"].index("-Q") + 1].split(",")
        assert 1 <= spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert sorted(_queues_of_query(meta["query"])) == sorted(consumed)
        assert float(meta["threshold"]) > 0
        assert meta["ignoreNullValues"] == "false"  # an empty answer must not read as an empty queue
        # The Prometheus of deploy/k8s, named in full (KEDA's operator resolves it from its own namespace).
        address = urlsplit(meta["serverAddress"])
        host = address.hostname or ""
        assert host.endswith(".svc.cluster.local")
        assert address.port in services[host.split(".")[0]]


def test_prometheus_scrapes_the_deployed_metrics_service_and_flower_in_compose_and_kubernetes() -> None:
    compose_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    docs = _k8s_docs()
    configmap = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "wft-prometheus"
    )
    k8s_config = yaml.safe_load(configmap["data"]["prometheus.yml"])
    assert configmap["data"]["alerts.yml"] == alerts, (
        "deploy/k8s/prometheus.yaml must hold alerts.yml verbatim"
    )
    for config in (compose_config, k8s_config):
        assert config["rule_files"] == ["alerts.yml"]
        assert [j["job_name"] for j in config["scrape_configs"]] == ["wft", "flower"]
        for job in config["scrape_configs"]:
            assert "basic_auth" not in job and "authorization" not in job  # neither target needs a key

    def targets(config: dict[str, Any]) -> dict[str, str]:
        return {j["job_name"]: j["static_configs"][0]["targets"][0] for j in config["scrape_configs"]}

    # Compose: the targets are services of the stack, listening on the scraped ports.
    services = _compose()["services"]
    compose_targets = targets(compose_config)
    assert compose_targets == {"wft": "metrics:9808", "flower": "flower:5555"}
    assert services["metrics"]["command"][:3] == ["python", "-m", "services.metrics"]
    assert "--port" in services["metrics"]["command"] and "9808" in services["metrics"]["command"]
    # Flower listens on FLOWER_PORT (default 5555), which the config file it loads reads.
    assert "--conf=/app/deploy/flower/flowerconfig.py" in services["flower"]["command"]
    assert services["flower"]["environment"].get("FLOWER_PORT", "5555") == "5555"
    assert "ports" not in services["metrics"]  # internal network only
    # Kubernetes: the targets are Services of the manifests, whose pods run the metrics service and Flower.
    k8s_services = _services(docs)
    for target in targets(k8s_config).values():
        host, port = target.rsplit(":", 1)
        assert int(port) in k8s_services[host], target
    metrics = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "wft-metrics")
    assert metrics["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python",
        "-m",
        "services.metrics",
    ]
    # systemd: a unit runs it too.
    unit = (DEPLOY / "systemd" / "wft-metrics.service").read_text()
    assert "-m services.metrics" in unit


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"


def _promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/bootstrap.sh dev installs Debian's prometheus package"
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, check=False, cwd=DEPLOY / "prometheus"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    assert "SUCCESS: 6 rules found" in _promtool("check", "rules", "alerts.yml")
    # Each alert fires on series that should fire it, and stays quiet on healthy ones.
    assert "SUCCESS" in _promtool("test", "rules", "alerts.test.yml")
    tested = {
        t["alertname"]
        for case in yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
        for t in case["alert_rule_test"] if t["exp_alerts"]
    }  # fmt: skip
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert tested == {r["alert"] for g in rules["groups"] for r in g["rules"]}, "an alert no test fires"


def test_prometheus_configurations_pass_promtool(tmp_path: Path) -> None:
    _promtool("check", "config", "prometheus.yml")
    configmap = next(
        d for d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "wft-prometheus"
    )
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    _promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_every_worker_group_and_queue_is_deployed_everywhere() -> None:
    compose_queues = {
        q for s in _compose()["services"].values() if "worker" in s.get("command", [])
        for q in s["command"][s["command"].index("-Q") + 1].split(",")
    }  # fmt: skip
    assert compose_queues == set(QUEUES)
    k8s_queues = {
        q for d in _k8s_docs() if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"] if "worker" in c.get("command", [])
        for q in c["command"][c["command"].index("-Q") + 1].split(",")
    }  # fmt: skip
    assert k8s_queues == set(QUEUES)


def test_graceful_shutdown_outlasts_the_task_time_limit() -> None:
    limit = Settings().task_time_limit
    for doc in _k8s_docs():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("wft-worker"):
            assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > limit
    for name, service in _compose()["services"].items():
        if name.startswith("worker"):
            assert int(service["stop_grace_period"].rstrip("s")) > limit
    unit = (DEPLOY / "systemd" / "wft-worker@.service").read_text()
    assert int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1)) > limit  # type: ignore[union-attr]


def test_every_image_is_pinned() -> None:
    images = [s["image"] for s in _compose()["services"].values() if "image" in s]
    images += [c["image"] for d in _k8s_docs() if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"]]  # fmt: skip
    images.append((DEPLOY / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0])
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image


def test_environment_variables_exist_in_the_settings() -> None:
    compose = _compose()
    app_env = set(compose["x-app"]["environment"])
    for service in compose["services"].values():
        if service.get("image") == compose["x-app"]["image"]:
            app_env |= set(service.get("environment", {}))
    # The ConfigMaps our processes read as environment (envFrom), not those mounted as files (Prometheus').
    env_maps = {e["configMapRef"]["name"] for d in _k8s_docs() if d["kind"] == "Deployment"
                for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("envFrom", [])
                if "configMapRef" in e}  # fmt: skip
    configmaps = {k for d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] in env_maps
                  for k in d["data"]}  # fmt: skip
    assert "wft-config" in env_maps
    k8s_env = {e["name"] for d in _k8s_docs() if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}  # fmt: skip
    systemd_env = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "systemd" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for where, names in (("compose", app_env), ("k8s ConfigMap", configmaps), ("k8s env", k8s_env),
                         ("systemd env", systemd_env)):  # fmt: skip
        unknown = names - SETTINGS - FOREIGN
        assert not unknown, f"{where} sets variables no setting reads: {sorted(unknown)}"


@pytest.mark.parametrize("path", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_are_well_formed(path: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    assert parser["Service"]["ExecStart"].startswith("/opt/wft/.venv/bin/")
    assert parser["Service"]["User"] == "wft"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
