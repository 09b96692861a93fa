"""`make ui` for real, and the demo's task logs as the Airflow UI serves them.

The demo's steps run on a micro family under a temporary ``THESEUS_STATE``, with the environment of
``scripts/demo-env.sh`` (the one ``make demo`` and ``make ui`` share): Airflow DB, seed, one filtered
``theseus_transport_release`` run through ``plugins/theseus_airflow/runner.py`` (``dag.test()``) and
an identical second one. Then ``scripts/ui.sh`` (what ``make ui`` runs) starts MLflow, the Airflow
api-server, scheduler and dag-processor on free loopback ports; the tests read both UIs, the DAG
list and the ``port`` task's logs through the REST API, and stop it with SIGINT (what Ctrl-C sends
to the terminal's foreground process group), after which no process it started may remain.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest_servers import BIN, free_port

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "scripts" / "ui.sh"
TRANSPORT = "theseus_transport_release"
DESCRIPTIONS = {"theseus_transport_release": "Port every task vector of a new base release",
                "theseus_watch_releases": "Register newly landed base releases"}


def in_demo_env(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``cmd`` with scripts/demo-env.sh sourced first: the demo's and the UI's settings, not a copy of them."""
    script = 'source scripts/demo-env.sh && exec "$@"'
    return subprocess.run(["bash", "-c", script, "demo-env", *cmd], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def transport(env: dict[str, str], conf: dict) -> dict:
    proc = in_demo_env([str(BIN / "python"), "plugins/theseus_airflow/runner.py", TRANSPORT, "--json", "--conf",
                        json.dumps(conf)], env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"dag_id"')]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's state with two runs of the same (filtered) transport: the second reuses the first's outcome."""
    tmp = tmp_path_factory.mktemp("ui")
    base_line = f"ui-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "BIN": str(BIN), "THESEUS_STATE": str(tmp / "state"), "THESEUS_ALPHAS": "0",
           "THESEUS_WATCH_SCHEDULE": "none",  # the scheduler of `make ui` stays idle during the test
           "PYTHONUNBUFFERED": "1"}
    steps = [
        [str(BIN / "airflow"), "db", "migrate"],
        [str(BIN / "python"), "-m", "theseus_ops.demo.seed", "--scale", "micro", "--family", base_line,
         "--families-root", str(tmp / "families"), "--datasets-root", str(tmp / "datasets")],
        [str(BIN / "python"), "-c", "from theseus_ops.workflow import WorkflowConfig, register_landed_releases as r; "
                                    "print(r(WorkflowConfig.from_env()))"],
    ]
    for cmd in steps:
        proc = in_demo_env(cmd, env)
        assert proc.returncode == 0, f"{cmd[:3]}: {proc.stderr[-3000:]}"
    conf = {"family": base_line, "target_version": "2", "tasks": ["upper"], "methods": ["pad"]}
    first = transport(env, conf)
    # where a worker writes (and the api-server reads) the port task's first try: FileTaskHandler's layout
    first_log = (tmp / "state" / "airflow" / "logs" / f"dag_id={TRANSPORT}" / f"run_id={first['run_id']}"
                 / "task_id=port" / "map_index=0" / "attempt=1.log")
    first_bytes = first_log.read_bytes() if first_log.exists() else b""
    second = transport(env, conf)
    return {"env": env, "state": tmp / "state", "family": base_line, "runs": [first, second],
            "first_log": first_bytes, "first_log_path": first_log}


def http(url: str, headers: dict | None = None, body: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, command line) of every live, non-zombie process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return out


def tree(root: int) -> dict[int, tuple[int, int, str]]:
    procs, keep = processes(), {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _g, _c) in procs.items() if ppid in keep} - keep
        keep |= more
        grew = bool(more)
    return {pid: procs[pid] for pid in keep if pid in procs}


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


@pytest.fixture(scope="module")
def ui(demo):
    ports = {"mlflow": free_port(), "airflow": free_port()}
    env = {**demo["env"], "THESEUS_UI_MLFLOW_PORT": str(ports["mlflow"]),
           "THESEUS_UI_AIRFLOW_PORT": str(ports["airflow"]),
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
    out = demo["state"] / "ui.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(["bash", str(UI)], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=ROOT, env=env, start_new_session=True)  # its own group, as a terminal's job
    info = {"proc": proc, "out": out, "ports": ports, "seen": {}}
    try:
        deadline = time.monotonic() + 420
        while "Ctrl-C stops everything" not in out.read_text():
            assert proc.poll() is None, f"ui.sh exited with {proc.returncode}:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ui.sh did not come up:\n{out.read_text()[-3000:]}"
            time.sleep(1)
        info["seen"] = tree(proc.pid)
        [password] = re.findall(r"login: admin / (\S+)", out.read_text())
        info["password"] = password
        info["mlflow"] = f"http://127.0.0.1:{ports['mlflow']}"
        info["airflow"] = f"http://127.0.0.1:{ports['airflow']}"
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        alive = processes()
        for pid, (_p, _g, cmd) in {**info["seen"], **tree(proc.pid)}.items():
            if pid in alive and alive[pid][2] == cmd:  # a leftover (a failed test says so), not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def token(ui) -> dict[str, str]:
    status, body = http(f"{ui['airflow']}/auth/token", {"Content-Type": "application/json"},
                        json.dumps({"username": "admin", "password": ui["password"]}).encode())
    assert status == 201, body  # the printed login works
    return {"Authorization": f"Bearer {json.loads(body)['access_token']}"}


def test_ui_refuses_a_taken_port_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "BIN": str(BIN), "THESEUS_STATE": str(tmp_path / "state"),
               "THESEUS_UI_MLFLOW_PORT": str(free_port()), "THESEUS_UI_AIRFLOW_PORT": str(port)}
        proc = subprocess.run(["bash", str(UI)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"make ui: error: port {port} (Airflow) on 127.0.0.1 is taken; set THESEUS_UI_AIRFLOW_PORT to a free one"]
    assert not (tmp_path / "state" / "airflow" / "airflow.db").exists()  # nothing was started or created


def test_ui_serves_mlflow_and_airflow_on_loopback_only(ui):
    assert http(f"{ui['mlflow']}/")[0] == 200
    status, body = http(f"{ui['airflow']}/api/v2/version")
    assert status == 200 and json.loads(body)["version"].startswith("3.")
    assert http(f"{ui['airflow']}/auth/login/")[0] == 200
    for port in ui["ports"].values():
        addresses = listening_addresses(port)
        assert addresses and addresses <= {"0100007F"}, addresses  # 127.0.0.1, nothing on other interfaces
    commands = " ".join(c for _p, _g, c in ui["seen"].values())
    for part in ("mlflow server", "airflow api_server", "airflow scheduler", "airflow dag-processor"):
        assert part in commands
    assert "airflow standalone" not in commands
    text = ui["out"].read_text()
    assert ui["mlflow"] in text and ui["airflow"] in text and "simple_auth_manager_passwords.json.generated" in text


def test_dag_list_shows_only_ours_described_and_unpaused(ui):
    status, body = http(f"{ui['airflow']}/api/v2/dags?limit=100", token(ui))
    assert status == 200, body
    dags = json.loads(body)
    assert dags["total_entries"] == 2  # no example DAGs
    by_id = {d["dag_id"]: d for d in dags["dags"]}
    assert set(by_id) == set(DESCRIPTIONS)
    for dag_id, start in DESCRIPTIONS.items():
        assert by_id[dag_id]["description"].startswith(start)
        assert by_id[dag_id]["is_paused"] is False


def test_port_task_logs_are_served_for_every_run(demo, ui):
    auth = {**token(ui), "Accept": "application/json"}
    first, second = demo["runs"]
    assert first["run_id"] != second["run_id"]
    events = {}
    for run in demo["runs"]:
        [port] = [t for t in run["tasks"] if t["task_id"] == "port"]
        url = (f"{ui['airflow']}/api/v2/dags/{TRANSPORT}/dagRuns/{urllib.parse.quote(run['run_id'], safe='')}"
               f"/taskInstances/port/logs/{port['try_number']}?map_index={port['map_index']}&full_content=true")
        status, body = http(url, auth)
        assert status == 200, body
        events[run["run_id"]] = [str(e.get("event", "")) for e in json.loads(body)["content"]]
    first_events, second_events = events[first["run_id"]], events[second["run_id"]]
    # the library's own progress lines reach the task log (each method's result is kept in memory, not written)
    assert any(e.startswith("transported full task vector") and " by pad " in e for e in first_events), first_events
    assert any("was already processed" in e for e in second_events), second_events  # the rerun's own log
    # progress of the long step: each method k of n, each α with its val metric, with elapsed time
    assert any(" method 1/" in e and ": transporting" in e for e in first_events), first_events
    assert any(" method 1/" in e and " alpha 1/" in e and ": val " in e and e.endswith("s)") for e in first_events)
    assert any("chosen on val" in e and "test" in e for e in first_events), first_events
    assert not any("Log file not found" in e for e in first_events + second_events)
    # the second run appended to nothing of the first: its file is byte for byte what it was
    assert demo["first_log"] and demo["first_log_path"].read_bytes() == demo["first_log"]


def test_ui_stops_everything_on_sigint(ui):
    proc = ui["proc"]
    seen = {**ui["seen"], **tree(proc.pid)}  # the executor may have started workers since
    assert len(seen) >= 5, seen  # ui.sh and its four servers at least
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the terminal signals the foreground process group
    assert proc.wait(timeout=90) == 130
    time.sleep(1)
    alive = processes()
    left = {pid: cmd for pid, (_pp, _g, cmd) in seen.items() if pid in alive and alive[pid][2] == cmd}
    assert not left, left
    groups = {pgid for _pp, pgid, _c in seen.values()}
    assert not [pid for pid, (_pp, pgid, _c) in alive.items() if pgid in groups]
    for port in ui["ports"].values():
        assert not listening_addresses(port)
    assert "stopped" in ui["out"].read_text()
