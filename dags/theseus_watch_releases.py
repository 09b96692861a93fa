"""theseus_watch_releases: the level-triggered reconciler that notices new base releases.

Every run (default every 5 minutes, ``THESEUS_WATCH_SCHEDULE``; ``none`` turns the schedule off):
register newly landed releases as base versions, find base versions not yet processed, and emit one
``theseus_base_release`` Asset event per release (base line, version, the version it supersedes). A
release is announced once, and again only if it is still unprocessed after
``THESEUS_REANNOUNCE_MINUTES`` (default 60), so a lost trigger heals itself without flooding.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, get_current_context, task
from theseus_airflow.dag_support import DEFAULT_ARGS, RELEASE_ASSET, step_errors, workflow_config

from theseus_ops.workflow import Release, mark_announced, register_landed_releases, releases_to_announce

SCHEDULE = os.environ.get("THESEUS_WATCH_SCHEDULE", "*/5 * * * *")
REANNOUNCE_S = 60.0 * float(os.environ.get("THESEUS_REANNOUNCE_MINUTES", "60"))


@dag(
    dag_id="theseus_watch_releases",
    schedule=None if SCHEDULE.strip().lower() in ("", "none") else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["theseus-ops"],
    description="Register newly landed base releases and announce each unprocessed one (the transport DAG's trigger)",
    is_paused_upon_creation=False,  # the watcher and its trigger are the product: on from the start
    doc_md=__doc__,
)
def theseus_watch_releases():
    @task
    def register_landed() -> list[dict]:
        """Landing zone -> registry: every complete release not yet registered becomes a base version."""
        with step_errors():
            return register_landed_releases(workflow_config())

    @task
    def find_due(landed: list[dict]) -> list[dict]:
        """Base versions with a predecessor, not processed, not announced recently."""
        with step_errors():
            return releases_to_announce(workflow_config(), REANNOUNCE_S)

    @task(outlets=[RELEASE_ASSET], map_index_template="{{ release_label }}", multiple_outputs=False)
    def announce(release: dict, *, outlet_events=None) -> dict:
        """One Asset event per release; the transport DAG is scheduled on it."""
        with step_errors():
            announced = Release.from_json(release)
        get_current_context()["release_label"] = f"{announced.base_line}/{announced.version}"
        outlet_events[RELEASE_ASSET].extra = announced.to_json()  # the Release as JSON: family, version, ...
        with step_errors():
            mark_announced(workflow_config(), announced.base_line, announced.version)
        return release

    announce.expand(release=find_due(register_landed()))


theseus_watch_releases()
