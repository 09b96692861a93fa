"""The theseus-ops Airflow plugin: the releases view in the UI, the MLflow webhook, and task links.

``fastapi_apps`` mounts ``theseus_airflow.views`` at ``/theseus`` in the api-server (the view, its
JSON at ``/theseus/releases.json``, each release's α-sweep PNG, the webhook);
``external_views`` puts it in the Browse menu, rendered inside the Airflow UI at
``/plugin/theseus-releases``; the global extra links point each mapped ``port`` task at its MLflow
run and model version.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from theseus_airflow.links import MlflowRunLink, ModelVersionLink
from theseus_airflow.views import app


class TheseusPlugin(AirflowPlugin):
    name = "theseus_ops"
    fastapi_apps: ClassVar[list] = [{"app": app, "url_prefix": "/theseus", "name": "theseus-ops releases"}]
    external_views: ClassVar[list] = [{"name": "Theseus releases", "href": "/theseus/", "destination": "nav",
                                       "category": "browse", "url_route": "theseus-releases"}]
    global_operator_extra_links: ClassVar[list] = [MlflowRunLink(), ModelVersionLink()]
