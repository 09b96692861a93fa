"""What both theseus-ops DAGs share: the release Asset, the settings, and the error policy.

Imported by the DAG files from the plugins folder, which Airflow puts on ``sys.path`` in every
process (DAG processor, workers, api-server). No math lives here: every step calls
``theseus_ops.workflow``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

# Third-party progress bars inside tasks: tqdm's carriage-return lines go to stderr, which the task
# log records at ERROR level, and they hide our own progress lines. Set before huggingface_hub and
# transformers are imported (they read these at import); MLflow reads its own at each download.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "TQDM_DISABLE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def quiet_third_party() -> None:
    """Silence libraries' progress bars; their warnings become log records (WARNING), not stderr text."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.captureWarnings(True)
    if "huggingface_hub" in sys.modules:  # imported already: switch its bars off directly
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


quiet_third_party()

from airflow.sdk import Asset  # noqa: E402 - after quiet_third_party()
from airflow.sdk.exceptions import AirflowFailException  # noqa: E402 - after quiet_third_party()

from theseus_ops.catalog import GateConfig  # noqa: E402 - after quiet_third_party()
from theseus_ops.errors import ServiceError, TheseusError  # noqa: E402 - after quiet_third_party()
from theseus_ops.workflow import WorkflowConfig  # noqa: E402 - after quiet_third_party()

log = logging.getLogger("theseus_ops")

# One Asset for every base line: an event's extra (a Release as JSON) names the base line, the new version and the
# one it supersedes.
RELEASE_ASSET = Asset(name="theseus_base_release", uri="theseus://base-releases", group="theseus")
GPU_POOL = os.environ.get("THESEUS_GPU_POOL", "gpu")
GPU_QUEUE = os.environ.get("THESEUS_GPU_QUEUE", "gpu")


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {os.environ.get(name)!r}") from exc


# Transient failures (MLflow, S3, a lost worker) are retried with exponential backoff; input errors
# are not retried at all (see ``step_errors``).
DEFAULT_ARGS = {
    "owner": "theseus-ops",
    "retries": _int_env("THESEUS_TASK_RETRIES", 3),
    "retry_delay": timedelta(seconds=_int_env("THESEUS_RETRY_DELAY_SECONDS", 30)),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def workflow_config(params: dict | None = None) -> WorkflowConfig:
    """The deployment's settings (environment) with a run's Params on top; an invalid mix fails the task."""
    params = params or {}
    overrides: dict = {}
    if params.get("methods"):
        overrides["methods"] = tuple(params["methods"])
    if params.get("alphas"):
        overrides["alphas"] = tuple(params["alphas"])
    gate = params.get("gate") or {}
    if gate:
        base = GateConfig.from_env()
        overrides["gate"] = GateConfig(
            margin=float(gate.get("margin", base.margin)),
            max_general_loss_increase=float(gate.get("max_general_loss_increase", base.max_general_loss_increase)),
            move_champion=bool(gate.get("move_champion", base.move_champion)),
            higher_is_better=base.higher_is_better,
        )
    with step_errors():
        return WorkflowConfig.from_env(**overrides)


@contextmanager
def step_errors() -> Iterator[None]:
    """Around one workflow step: input errors fail the task for good, service errors are retried.

    An input error (bad input, a missing dataset, an unmappable model, a conflicting release) would
    fail the same way on every retry, so it becomes ``AirflowFailException`` with the one-line
    message. A :class:`~theseus_ops.errors.ServiceError` (MLflow or S3 still unreachable after the
    bounded in-process retries) and any other exception propagate unchanged, so Airflow retries
    the task with backoff (``DEFAULT_ARGS``).
    """
    try:
        yield
    except TheseusError as exc:
        error = airflow_error(exc)
        if error is exc:
            raise
        raise error from exc


def airflow_error(exc: BaseException) -> BaseException:
    """What to raise for ``exc``: AirflowFailException (no retries) for input errors, else ``exc`` itself."""
    if isinstance(exc, TheseusError) and not isinstance(exc, ServiceError):
        return AirflowFailException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return exc
