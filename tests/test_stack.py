"""The docker-compose topology, distributed, as real processes: scripts/stack-local.sh up|down.

PostgreSQL (Airflow metadata DB, MLflow backend) and Redis (Celery broker) are the machine's own;
the script starts moto (S3), ``mlflow server``, the Airflow api-server, scheduler, dag-processor,
triggerer and two Celery workers (queues ``default`` and ``gpu``). Scenario 1 lands a release in
S3, lets the scheduled watcher find it, waits for the asset-triggered transport run through the
REST API with a JWT, and checks the registry. Scenario 2 lands the next release and SIGKILLs the
``gpu`` worker in the middle of a ``port`` task: the task must be retried on the restarted worker
and the release must complete with nothing lost or duplicated. Skips where PostgreSQL or Redis
is not running (a laptop); runs in CI, where both are.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest_servers import PG, free_port, postgres_reachable
from theseus_ops.catalog import Catalog, VersionRef, find_base_release
from theseus_ops.demo import family as demo_family
from theseus_ops.storage import land_release, open_zone
from theseus_ops.workflow import PROCESSED_TAG, WorkflowConfig
from theseus_ops.workflow.summary import read_summary

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "stack-local.sh"
TRANSPORT = "theseus_transport_release"


def redis_reachable() -> bool:
    try:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False


pytestmark = pytest.mark.skipif(
    not (postgres_reachable() and redis_reachable() and shutil.which("psql") and shutil.which("pg_isready")),
    reason="the distributed stack needs PostgreSQL (127.0.0.1:5432, psql) and Redis (127.0.0.1:6379)")


def unused_redis_db() -> int:
    """A Redis database (1-15) holding no keys, so no other stack's Celery workers share its queues.

    A stale worker left on the shared Redis by an earlier, killed run would otherwise take this
    stack's tasks from the same queue names and never report them here.
    """
    import redis

    for db in random.sample(range(1, 16), 15):
        if redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=2).dbsize() == 0:
            return db
    pytest.skip("every Redis database 1-15 on 127.0.0.1:6379 holds keys; none is free for the stack")


def source_env(env_file: Path) -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f"set -a; source {env_file}; env -0"], capture_output=True, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


class Stack:
    """The running stack: its environment, the REST API with a JWT, and role control."""

    def __init__(self, directory: Path, env: dict[str, str], port: int) -> None:
        self.dir, self.env, self.base = directory, env, f"http://127.0.0.1:{port}"
        self._token: tuple[str, float] | None = None

    def script(self, *args: str) -> str:
        proc = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                              timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    def token(self) -> str:
        if self._token is None or time.time() - self._token[1] > 600:
            password = json.loads((self.dir / "passwords.json").read_text())["admin"]
            req = urllib.request.Request(f"{self.base}/auth/token", method="POST",
                                         data=json.dumps({"username": "admin", "password": password}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._token = (json.loads(resp.read())["access_token"], time.time())
        return self._token[0]

    def get(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns?order_by=-start_date&limit=50")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances")["task_instances"]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                         for p in sorted(self.dir.glob("*.log")))


def wait_for(what: str, check, timeout: float, stack: Stack, interval: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{stack.logs()[-12000:]}")


def new_transport_run(stack: Stack, known: set[str]):
    """The first asset-triggered transport run not in ``known`` once it finished (None while running)."""
    for run in stack.runs(TRANSPORT):
        if run["dag_run_id"] not in known and run["run_type"] == "asset_triggered":
            return run if run["state"] in ("success", "failed") else None
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    name = f"theseus_stack_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "STACK_DIR": str(directory), "STACK_NAME": name, "STACK_API_PORT": str(port),
           "STACK_MLFLOW_PORT": str(free_port()), "STACK_MOTO_PORT": str(free_port()), "PGHOST": PG["host"],
           "STACK_REDIS_URL": f"redis://127.0.0.1:6379/{unused_redis_db()}",
           "PGPORT": str(PG["port"]), "PGUSER": PG["user"], "BIN": str(Path(sys.executable).parent),
           "THESEUS_ALPHAS": "0,0.5,1,1.5,2,2.5,3,3.5,4", "THESEUS_RETRY_DELAY_SECONDS": "2",
           "THESEUS_GATE_MAX_GENERAL_LOSS_INCREASE": "100", "THESEUS_WATCH_SCHEDULE": "* * * * *"}
    env = {k: v for k, v in env.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
    proc = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield Stack(directory, {**env, **source_env(directory / "env.sh")}, port)
    finally:
        groups = [int(p.read_text()) for p in directory.glob("*.pid") if p.read_text().strip().isdigit()]
        down = subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
        left = [g for g in groups if _group_alive(g)]
        assert not left, f"process groups left running after down: {left}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def released(stack, tmp_path_factory):
    """Scenario 1: v1 and its task vectors cataloged, v2 landed in S3; the scheduled watcher takes it from there."""
    tmp = tmp_path_factory.mktemp("stack-family")
    base_line = f"stk-{uuid.uuid4().hex[:6]}"
    seed = subprocess.run([sys.executable, "-m", "theseus_ops.demo.seed", "--scale", "micro", "--family", base_line,
                           "--families-root", str(tmp / "families"), "--datasets-root", str(tmp / "datasets")],
                          env=stack.env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert seed.returncode == 0, seed.stderr[-3000:]
    cfg = _cfg(stack)
    run = wait_for("the asset-triggered transport run of v2", lambda: new_transport_run(stack, set()), 420, stack)
    return {"family": base_line, "cfg": cfg, "catalog": Catalog(cfg.catalog), "run": run, "families": tmp / "families",
            "vectors": json.loads(seed.stdout.strip().splitlines()[-1])["vectors"]}


def _cfg(stack: Stack) -> WorkflowConfig:
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith(("THESEUS_", "AWS_"))})
        return WorkflowConfig.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_watcher_finds_the_release_and_transport_succeeds_on_the_workers(stack, released):
    run = released["run"]
    assert run["state"] == "success", stack.logs()[-8000:]
    tis = stack.task_instances(TRANSPORT, run["dag_run_id"])
    ports = [t for t in tis if t["task_id"] == "port"]
    assert len(ports) == 2 and all(t["state"] == "success" and t["queue"] == "gpu" and t["pool"] == "gpu"
                                   for t in ports)
    assert {t["queue"] for t in tis if t["task_id"] != "port"} == {"default"}
    watcher_runs = [r for r in stack.runs("theseus_watch_releases") if r["run_type"] == "scheduled"]
    assert any(r["state"] == "success" for r in watcher_runs)


def test_registry_state_after_the_release(released):
    catalog, base_line = released["catalog"], released["family"]
    # the watcher and the seeding script may register v1 concurrently: exactly one version per release survives
    bases = [v for v in catalog.search_versions(base_line, {"theseus.role": "base"})]
    assert sorted(v.tags["theseus.release"] for v in bases) == ["v1", "v2-wide-shuffled"]
    base2 = find_base_release(catalog, base_line, "v2-wide-shuffled")
    summary = read_summary(released["cfg"], base2.tags[PROCESSED_TAG])
    assert {o["vector"] for o in summary["outcomes"]} == set(released["vectors"].values())
    for o in summary["outcomes"]:
        reg = o["registered"]
        if o["selected"] == "base":
            assert reg["model"] is None
            continue
        vec = catalog.get_version(VersionRef(*reg["task_vector"].rsplit("/", 1)))
        assert vec.tags["theseus.base_version"] == str(base2.version)
        assert vec.tags["theseus.transported_from"] == o["vector"]
        model_name, model_version = reg["model"].rsplit("/", 1)
        if reg["candidate"]:
            assert catalog.get_alias(model_name, "candidate").version == model_version
    serving = [v for v in catalog.search_versions() if v.name.startswith(base_line) and v.name.endswith("-serving")]
    assert len(serving) == len({v.name for v in serving}), "one serving version per vector and release"


def test_killed_gpu_worker_task_is_retried_and_nothing_is_lost_or_duplicated(stack, released, monkeypatch):
    catalog, base_line, cfg = released["catalog"], released["family"], released["cfg"]
    known = {r["dag_run_id"] for r in stack.runs(TRANSPORT)}
    base2 = find_base_release(catalog, base_line, "v2-wide-shuffled")
    carried = [v for v in catalog.search_versions(tags={"theseus.role": "task_vector", "theseus.base_model": base_line,
                                                        "theseus.base_version": str(base2.version)})]
    assert carried, "scenario 1 registered at least one transported vector on v2 (the next release ports it)"
    fam = demo_family.build_family(demo_family.family_config("micro"), released["families"], progress=lambda _m: None)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, stack.env[key])
    land_release(fam.model("v2-wide"), base_line, "v2-wide", open_zone(cfg.storage))

    def running_port():
        for run in stack.runs(TRANSPORT):
            if run["dag_run_id"] not in known and run["run_type"] == "asset_triggered":
                ports = [t for t in stack.task_instances(TRANSPORT, run["dag_run_id"]) if t["task_id"] == "port"]
                busy = [t for t in ports if t["state"] == "running"]
                return (run, busy[0]) if busy else None
        return None

    run, victim = wait_for("a running port task of v3", running_port, 420, stack, interval=0.5)
    stack.script("kill", "worker-gpu")  # SIGKILL: worker, task supervisor and task process, mid-task
    time.sleep(3)
    stack.script("start", "worker-gpu")
    done = wait_for("the transport run of v3 to finish", lambda: new_transport_run(stack, known), 480, stack)
    assert done["dag_run_id"] == run["dag_run_id"] and done["state"] == "success", stack.logs()[-8000:]
    retried = [t for t in stack.task_instances(TRANSPORT, run["dag_run_id"])
               if t["task_id"] == "port" and t["map_index"] == victim["map_index"]]
    assert retried[0]["state"] == "success" and retried[0]["try_number"] >= 2
    base3 = find_base_release(catalog, base_line, "v2-wide")
    summary = read_summary(cfg, base3.tags[PROCESSED_TAG])
    assert {o["vector"] for o in summary["outcomes"]} == {f"{v.name}/{v.version}" for v in carried}
    # nothing duplicated: one transported vector per (source vector, v3), one serving version per vector and release
    on_v3 = [v for v in catalog.search_versions(tags={"theseus.role": "task_vector", "theseus.base_model": base_line,
                                                      "theseus.base_version": str(base3.version)})]
    sources = [v.tags["theseus.transported_from"] for v in on_v3]
    assert len(sources) == len(set(sources))
    serving_v3 = [v for v in catalog.search_versions(tags={"theseus.role": "transported_model"})
                  if v.name.startswith(base_line) and v.tags.get("theseus.base_version") == str(base3.version)]
    assert len(serving_v3) == len({v.name for v in serving_v3})
    for o in summary["outcomes"]:
        if o["registered"]["model"]:
            assert o["registered"]["task_vector"] in {f"{v.name}/{v.version}" for v in on_v3}
