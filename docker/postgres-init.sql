-- One PostgreSQL server, two databases: Airflow's metadata and MLflow's backend store.
-- Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d).
CREATE DATABASE mlflow;
GRANT ALL PRIVILEGES ON DATABASE mlflow TO CURRENT_USER;
