"""Operator extra links from each mapped ``port`` task to its MLflow run and registered model version.

Global links evaluated by the api-server: they read the task instance's own XCom (the outcome the
task returned: its outcome run and registered model) so each map index links to its own vector,
at the MLflow UI address the api-server knows (``THESEUS_MLFLOW_UI_URL``, else an http tracking URI).
"""

from __future__ import annotations

import logging
import os

from airflow.sdk import BaseOperatorLink

from theseus_ops.workflow import WorkflowConfig
from theseus_ops.workflow.summary import mlflow_ui_links, ui_url_of

log = logging.getLogger("theseus_ops")
TRANSPORT_DAG = "theseus_transport_release"
PORT_TASK = "port"


def outcome_links(ti_key) -> dict[str, str]:
    """MLflow UI links of the outcome a ``port`` task instance returned; {} for any other task."""
    if ti_key.dag_id != TRANSPORT_DAG or ti_key.task_id != PORT_TASK:
        return {}
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=ti_key.run_id, key="return_value", dag_ids=ti_key.dag_id,
                                                     task_ids=ti_key.task_id, map_indexes=ti_key.map_index)).first()
            value = XComModel.deserialize_value(row) if row is not None else None
        if not isinstance(value, dict):
            return {}
        cfg = WorkflowConfig.from_env()
        return mlflow_ui_links(cfg, value, ui_url_of(cfg, os.environ.get("THESEUS_MLFLOW_UI_URL")))
    except Exception:  # a link must never break the task page
        log.warning("could not build the links of %s", ti_key, exc_info=True)
        return {}


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run that records this task vector's outcome (every method, α sweep, selection)."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        return outcome_links(ti_key).get("mlflow_run", "")


class ModelVersionLink(BaseOperatorLink):
    """The transported model version this task registered (none when the base was kept)."""

    name = "Model version"

    def get_link(self, operator, *, ti_key) -> str:
        return outcome_links(ti_key).get("model_version", "")
