"""The deploy files run Flower and beat as the tests run them: Flower with deploy/flower/flowerconfig.py
(and its state on a volume), beat on the Redis schedule (celery-redbeat) with no schedule file anywhere.
Checked without a Docker engine or a cluster, by reading the files (tests/test_deploy.py validates their
schemas)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path
from typing import Any

import yaml

from cli.processes import FLOWER_CONFIG, flower_argv
from config.settings import Settings
from fabric import celery_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CONFIG_TEXT = FLOWER_CONFIG.read_text()


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return dict(doc)
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _compose_command(service: str) -> list[str]:
    command: list[str] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][service]["command"]
    return command


def _exec_start(unit: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((DEPLOY / "systemd" / unit).read_text())
    return shlex.split(parser["Service"]["ExecStart"])


def _conf(argv: list[str]) -> str:
    confs = [a.split("=", 1)[1] for a in argv if a.startswith("--conf=")]
    assert len(confs) == 1, f"Flower started without its configuration file: {argv}"
    return confs[0]


def test_wft_run_starts_flower_with_the_deploy_configuration() -> None:
    assert FLOWER_CONFIG == DEPLOY / "flower" / "flowerconfig.py"
    assert Path(_conf(flower_argv())) == FLOWER_CONFIG


def test_the_image_carries_every_package_the_project_installs() -> None:
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = [name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = [name for name in packages if f"COPY {name} ./{name}" not in dockerfile]
    assert missing == [], f"deploy/Dockerfile does not copy {missing}: the image could not import them"
    for module in pyproject["tool"]["setuptools"]["py-modules"]:
        assert f"{module}.py" in dockerfile


def test_compose_loads_the_configuration_the_image_carries() -> None:
    conf = _conf(_compose_command("flower"))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    workdir = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("WORKDIR "))
    assert "COPY deploy/flower ./deploy/flower" in dockerfile
    assert conf == f"{workdir}/deploy/flower/flowerconfig.py"


def test_systemd_loads_the_configuration_of_its_checkout() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((DEPLOY / "systemd" / "wft-flower.service").read_text())
    checkout = parser["Service"]["WorkingDirectory"]
    assert _conf(_exec_start("wft-flower.service")) == f"{checkout}/deploy/flower/flowerconfig.py"


def test_kubernetes_loads_the_configuration_the_image_carries_and_keeps_the_state_on_a_claim() -> None:
    deployment = _k8s("Deployment", "wft-flower")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split("/")[-1].startswith("wft:")
    assert _conf(container["command"]) == _conf(_compose_command("flower"))  # the image's copy
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    # The state file goes to DATA_DIR (flowerconfig.py), which is a mounted persistent volume claim.
    data_dir = next(e["value"] for e in container["env"] if e["name"] == "DATA_DIR")
    data_volume = next(n for n, path in mounts.items() if path == data_dir)
    claim = _k8s("PersistentVolumeClaim", volumes[data_volume]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One writer of the file, also during an update.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_flower_credentials_come_from_the_settings_never_a_command_line() -> None:
    k8s = _k8s("Deployment", "wft-flower")["spec"]["template"]["spec"]["containers"][0]["command"]
    commands = [_compose_command("flower"), _exec_start("wft-flower.service"), flower_argv(), k8s]
    for argv in commands:
        assert not [a for a in argv if "basic_auth" in a or "basic-auth" in a], argv
    assert (
        'basic_auth = [f"{_settings.flower_user}:{_settings.flower_password.get_secret_value()}"]'
        in CONFIG_TEXT
    )
    settings = set(Settings.model_fields)
    assert {"flower_state_save_interval", "flower_purge_offline_workers"} <= settings
    for name in ("flower_state_save_interval", "flower_purge_offline_workers", "flower_port"):
        assert f"_settings.{name}" in CONFIG_TEXT


def test_beat_runs_on_the_shared_schedule_everywhere() -> None:
    config = celery_config.build(Settings())
    assert config["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert config["beat_max_loop_interval"] < config["redbeat_lock_timeout"]
    beat = _k8s("Deployment", "wft-beat")
    commands = [_compose_command("beat"), _exec_start("wft-beat.service"),
                beat["spec"]["template"]["spec"]["containers"][0]["command"]]  # fmt: skip
    for argv in commands:
        assert "beat" in argv
        # No schedule file, no other scheduler: the configured one, shared through Redis.
        assert not {"-s", "--schedule", "-S", "--scheduler"} & set(argv), argv
    assert beat["spec"]["replicas"] >= 2  # a standby: the lock makes a second replica safe
