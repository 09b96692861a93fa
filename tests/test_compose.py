"""docker-compose.yml: valid against the Compose specification, complete, and wired consistently.

Docker cannot run here, so the file is validated with a real tool from the package registry
(check-jsonschema and its vendored Compose-spec schema) and the wiring is checked by reading it:
every service the README names exists, every Airflow process shares one configuration, URLs
point at services and ports that exist, secrets come from .env.example and none is committed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
AIRFLOW_ROLES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker", "airflow-worker-gpu", "airflow-init")
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_validates_against_the_compose_specification():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is a dev dependency"
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_spec_check_catches_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  web:\n    image: x\n    ports: 8080\n    depends_on: {db: {condition: maybe}}\n")
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(broken)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0


def test_every_service_the_readme_names_exists(services):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- compose-services")[1].split("<!-- /compose-services -->")[0]
    named = set(re.findall(r"^\| `([a-z0-9-]+)` \|", block, flags=re.M))
    assert named == set(services), f"README names {sorted(named)}, compose has {sorted(services)}"
    assert {"postgres", "redis", "rustfs", "s3-init", "mlflow", *AIRFLOW_ROLES} <= set(services)


def test_airflow_processes_share_one_configuration(services):
    envs = {name: env_of(services[name]) for name in AIRFLOW_ROLES}
    shared = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
              "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
              "THESEUS_MLFLOW_TRACKING_URI", "THESEUS_LANDING_URL", "THESEUS_S3_ENDPOINT_URL")
    for key in shared:
        values = {name: env.get(key) for name, env in envs.items()}
        assert None not in values.values() and len(set(values.values())) == 1, (key, values)
    env = envs["airflow-scheduler"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "${AIRFLOW_JWT_SECRET" in env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_urls_point_at_services_and_their_ports(services):
    env = env_of(services["airflow-scheduler"])
    execution = urlparse(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    api_cmd = command_of(services["airflow-apiserver"])
    assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
    assert str(execution.port) == flag(api_cmd, "--port")
    assert urlparse(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    mlflow_cmd = command_of(services["mlflow"])
    tracking = urlparse(env["THESEUS_MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and str(tracking.port) == flag(mlflow_cmd, "--port")
    assert "--allowed-hosts" in mlflow_cmd and "mlflow" in flag(mlflow_cmd, "--allowed-hosts")
    assert "--serve-artifacts" in mlflow_cmd and flag(mlflow_cmd, "--artifacts-destination").startswith("s3://")
    assert "@postgres:5432/mlflow" in flag(mlflow_cmd, "--backend-store-uri")
    s3 = urlparse(env["THESEUS_S3_ENDPOINT_URL"])
    assert s3.hostname == "rustfs" and env_of(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == env[
        "THESEUS_S3_ENDPOINT_URL"]
    assert env_of(services["rustfs"])["RUSTFS_ADDRESS"].endswith(f":{s3.port}")
    # the buckets s3-init creates are the ones the landing zone and MLflow's artifacts use
    init_env = env_of(services["s3-init"])
    assert env["THESEUS_LANDING_URL"] == f"s3://{init_env['LANDING_BUCKET']}/releases"
    assert init_env["ARTIFACT_BUCKET"] in flag(mlflow_cmd, "--artifacts-destination")
    assert "LANDING_BUCKET" in " ".join(command_of(services["s3-init"]))


def test_gpu_worker_pool_and_queue(services):
    gpu = services["airflow-worker-gpu"]
    cmd = command_of(gpu)
    assert flag(cmd, "--queues") == "gpu" and "${GPU_COUNT" in flag(cmd, "--concurrency")
    assert env_of(gpu)["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == flag(cmd, "--concurrency")
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert str(device["count"]) == flag(cmd, "--concurrency")
    assert flag(command_of(services["airflow-worker"]), "--queues") == "default"
    init = " ".join(command_of(services["airflow-init"]))
    assert "airflow db migrate" in init and "airflow pools set gpu" in init


def test_healthchecks_and_dependency_conditions(services):
    for name, service in services.items():
        if name not in ("s3-init", "airflow-init"):
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, it has no check"
            else:
                assert condition == "service_completed_successfully" and dep in ("s3-init", "airflow-init")
    for role in AIRFLOW_ROLES[:-1]:
        assert services[role]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_secrets_come_from_env_example_and_none_is_committed(compose):
    text = COMPOSE.read_text()
    used = set(VAR.findall(text))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), f"undocumented variables: {sorted(used - set(example))}"
    secrets = [k for k in example if any(w in k for w in ("PASSWORD", "SECRET", "FERNET", "KEY"))]
    assert secrets and all(example[k].startswith("CHANGE-ME") for k in secrets), secrets
    for key in secrets:  # compose refuses to start without them
        assert re.search(r"\$\{" + key + r":\?", text), f"{key} has no ${{{key}:?...}} guard"
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_installs_the_package_with_airflow():
    docker = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[airflow]"' in docker and "COPY dags" in docker and "COPY plugins" in docker
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/theseus/dags" in docker
