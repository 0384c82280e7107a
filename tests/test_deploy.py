"""The deploy files, validated without a Docker engine or a cluster: schemas from PyPI validators, and
every environment variable they give our processes checked against the settings."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
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


def test_keda_scaled_objects_target_worker_deployments_and_real_queues() -> None:
    docs = _k8s_docs()
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["metadata"]["listName"] in QUEUES
            assert int(trigger["metadata"]["listLength"]) > 0


def test_every_worker_group_and_queue_is_deployed_everywhere() -> None:
    compose_queues = {
        q for s in _compose()["services"].values() if "worker" in s.get("command", [])
        for q in s["command"][s["command"].index("-Q") + 1].split(",")
    }  # fmt: skip
    assert compose_queues == set(QUEUES)
    k8s_queues = {
        q for d in _k8s_docs() if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"] if "worker" in c["command"]
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
    configmaps = {k for d in _k8s_docs() if d["kind"] == "ConfigMap" for k in d["data"]}
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
