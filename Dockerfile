# theseus-ops image: Airflow 3.3 (Celery) + MLflow + the theseus_ops package, its DAGs and plugins.
# CPU torch by default; for GPU workers build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/theseus/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/theseus/plugins

RUN apt-get update && apt-get install -y --no-install-recommends curl tini && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --gid 0 airflow && mkdir -p /opt/airflow /opt/theseus /data \
    && chown -R 50000:0 /opt/airflow /opt/theseus /data

WORKDIR /opt/theseus
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY theseus_ops ./theseus_ops
# one resolution for Airflow, MLflow and the engine (see docs/airflow-notes.md)
RUN pip install ".[airflow]" "torch==${TORCH_VERSION}"
COPY dags ./dags
COPY plugins ./plugins

USER 50000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
