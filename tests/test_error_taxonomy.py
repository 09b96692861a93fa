"""The error taxonomy: input errors fail at once (exit 2, AirflowFailException), service errors are retried.

The Airflow check is a real ``dag.test()`` run (``plugins/theseus_airflow/runner.py``) of a two-task
DAG with ``retries=1``, in a subprocess with its own ``AIRFLOW_HOME``: a step whose MLflow server
stays unreachable through every in-process retry must be retried by Airflow, and a step with bad
input must fail on its first try.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest_servers import BIN, closed_port
from theseus_ops.errors import InputError, ServiceError, TheseusError
from theseus_ops.service_errors import CatalogError, ConflictError, IntegrityError, ServiceUnavailableError

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "plugins" / "theseus_airflow" / "runner.py"

PROBE_DAG = '''
from datetime import timedelta
import os

from airflow.sdk import dag, get_current_context, task

from theseus_airflow.dag_support import step_errors
from theseus_ops.catalog import Catalog, CatalogConfig
from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy


@dag(dag_id="taxonomy_probe", schedule=None, default_args={"retries": 1, "retry_delay": timedelta(seconds=0.2)})
def probe():
    @task
    def outage():
        if get_current_context()["ti"].try_number == 1:  # MLflow is down for the whole first try
            catalog = Catalog(CatalogConfig(tracking_uri=os.environ["DOWN_URL"],
                                            retry=RetryPolicy(attempts=2, base_delay=0.05)))
            with step_errors():
                catalog.ping()
        return "recovered"

    @task
    def bad_input():
        with step_errors():
            raise InputError("the dataset s3://data/nope does not exist")

    outage()
    bad_input()


probe()
'''


def test_the_two_branches():
    for cls in (InputError, CatalogError, ConflictError, IntegrityError):
        assert issubclass(cls, InputError) and not issubclass(cls, ServiceError) and cls.exit_code == 2
    assert issubclass(ServiceUnavailableError, ServiceError) and not issubclass(ServiceUnavailableError, InputError)
    assert issubclass(ServiceError, TheseusError) and ServiceUnavailableError.exit_code == 3


def test_step_errors_lets_service_errors_through_and_fails_input_errors():
    from airflow.sdk.exceptions import AirflowFailException

    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        from theseus_airflow.dag_support import airflow_error, step_errors
    finally:
        sys.path.remove(str(ROOT / "plugins"))

    down = ServiceUnavailableError("MLflow ping at http://x: unreachable after 4 attempt(s)")
    with pytest.raises(ServiceUnavailableError), step_errors():
        raise down
    assert airflow_error(down) is down
    with pytest.raises(AirflowFailException, match=r"^no such dataset$"), step_errors():
        raise InputError("no such dataset")


def test_airflow_retries_a_service_outage_and_fails_bad_input_at_once(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "taxonomy_probe.py").write_text(PROBE_DAG)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "PYTHONPATH": str(ROOT), "DOWN_URL": f"http://127.0.0.1:{closed_port()}"}
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(RUNNER), "taxonomy_probe", "--json", "--returns", "outage"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"runner printed no report (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1])
    tasks = {t["task_id"]: t for t in report["tasks"]}
    # the outage was not turned into AirflowFailException: Airflow ran the task again, and it succeeded
    assert (tasks["outage"]["state"], tasks["outage"]["try_number"]) == ("success", 2), tasks
    assert report["returns"]["outage"] == "recovered"
    # the input error failed for good on the first try, though one retry was allowed
    assert (tasks["bad_input"]["state"], tasks["bad_input"]["try_number"]) == ("failed", 1), tasks
    assert "unreachable after 2 attempt(s)" in proc.stdout + proc.stderr


def test_cli_exit_codes(tmp_path):
    """One line either way; 3 for a server that stays unreachable, 2 for bad input."""
    env = {**os.environ, "THESEUS_RETRY_ATTEMPTS": "2", "THESEUS_RETRY_BASE_DELAY": "0.05"}
    down = f"http://127.0.0.1:{closed_port()}"
    for argv, code, words in (
        (["catalog", "--tracking-uri", down, "show", "llama", "1"], 3, "unreachable after 2 attempt(s)"),
        (["catalog", "--tracking-uri", down, "show", "bad name!", "1"], 2, "is not valid"),
    ):
        proc = subprocess.run([str(BIN / "theseus-ops"), *argv], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, proc.stderr[-2000:]
        assert lines[-1].startswith("theseus-ops: error: ") and words in lines[-1], lines
        assert [line for line in lines if "error" in line.lower()] == [lines[-1]], lines
