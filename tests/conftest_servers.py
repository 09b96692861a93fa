"""Real servers for the catalog and storage tests, on free loopback ports.

* ``mlflow_server``: an ``mlflow server`` subprocess with local artifacts, parametrized over a
  SQLite backend store and, where PostgreSQL answers on 127.0.0.1:5432, a fresh PostgreSQL
  database (dropped at the end; the parameter is skipped when PostgreSQL is unreachable).
* ``moto_endpoint``: moto's S3 in server mode, talked to over HTTP.

Import the fixtures into a test module: ``from tests.conftest_servers import mlflow_server``. The
import makes them that module's own fixtures, so they are module-scoped: each module's servers stop
when it is done (session scope kept every module's servers alive to the end of the run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# Nothing may reach the Hugging Face Hub, here or in any subprocess the tests start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

PG = {"host": os.environ.get("THESEUS_TEST_PGHOST", "127.0.0.1"),
      "port": int(os.environ.get("THESEUS_TEST_PGPORT", "5432")),
      "user": os.environ.get("THESEUS_TEST_PGUSER", "postgres")}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    return free_port()


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (mlflow starts uvicorn workers), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers: mlflow's job runner and its huey consumers


def start(cmd: list[str], health: str, log: Path, timeout: float = 120,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    fh = open(log, "wb")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        wait_http(health, proc, timeout, log)
    except BaseException:
        stop(proc)
        raise
    return proc


@dataclass(frozen=True)
class MlflowServer:
    url: str
    backend: str
    artifacts: Path  # the server's artifact store on disk (for tampering tests)


def _mlflow(tmp: Path, backend_uri: str, backend: str) -> tuple[subprocess.Popen, MlflowServer]:
    port = free_port()
    artifacts = tmp / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # webhooks to plain-http local receivers (the Airflow plugin in the workflow tests)
    webhooks = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_WEBHOOK_CACHE_TTL": "1"}  # see a webhook created by a test at once
    # MLflow 3's job runner (a huey consumer pool, about 1.3 GB per server) serves GenAI jobs we never use.
    env = {**webhooks, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = start(cmd, f"http://127.0.0.1:{port}/health", tmp / "server.log", timeout=180, env=env)
    return proc, MlflowServer(f"http://127.0.0.1:{port}", backend, artifacts)


def postgres_reachable() -> bool:
    try:
        import psycopg2
    except ImportError:
        return False
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def mlflow_sqlite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-sqlite")
    proc, server = _mlflow(tmp, f"sqlite:///{tmp / 'mlflow.db'}", "sqlite")
    yield server
    stop(proc)


@pytest.fixture(scope="module")
def mlflow_postgres(tmp_path_factory):
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG['host']}:{PG['port']}")
    import psycopg2

    db = f"theseus_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{db}"')
    tmp = tmp_path_factory.mktemp("mlflow-postgres")
    proc = None
    try:
        proc, server = _mlflow(tmp, f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}", "postgresql")
        yield server
    finally:
        if proc is not None:
            stop(proc)
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mlflow_server(request) -> MlflowServer:
    """The same tests against a SQLite and a PostgreSQL backend store."""
    return request.getfixturevalue(f"mlflow_{'postgres' if request.param == 'postgresql' else 'sqlite'}")


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    exe = BIN / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = start([*cmd, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/moto-api/",
                 tmp / "moto.log", timeout=60)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"theseus-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
