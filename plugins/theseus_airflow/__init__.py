"""theseus-ops' Airflow glue: DAG support, operator links and the UI/webhook app.

Lives in the plugins folder (on ``sys.path`` in every Airflow process) because ``theseus_ops``
itself never imports Airflow.
"""
