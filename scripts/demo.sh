#!/usr/bin/env bash
# make demo: the whole product on embedded defaults, through Airflow for real.
# State lives under .theseus/: Airflow's SQLite DB, MLflow's SQLite DB and artifact store, the landing
# zone as a local directory. A second run reuses everything and registers nothing new.
set -euo pipefail
FAMILY="${THESEUS_DEMO_FAMILY:-theseus-tiny}"
SCALE="${THESEUS_DEMO_SCALE:-tiny}"
# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"  # BIN, ROOT, STATE, LOGS and every setting `make ui` shares
# shellcheck source=scripts/demo-steps.sh
source "$(dirname "$0")/demo-steps.sh"  # step, migrate_airflow_db, run_dag

t0=$SECONDS
migrate_airflow_db

step "the $SCALE family (built once, cached under $STATE/families); v1 and its task vectors cataloged; v2-wide-shuffled landed"
"$BIN/python" -m theseus_ops.demo.seed --scale "$SCALE" --family "$FAMILY" --families-root "$STATE/families" \
    --datasets-root "$STATE/datasets" 2> "$LOGS/seed.log" | tail -1

run_dag theseus_watch_releases
run_dag theseus_transport_release

step "release summary"
"$BIN/python" -m theseus_ops.demo.seed --report --family "$FAMILY" 2>> "$LOGS/seed.log"

cat <<EOT

Done in $((SECONDS - t0)) s. Run 'make demo' again: everything is reused, nothing is registered twice.
Open both UIs (MLflow, and Airflow with the task logs and Browse -> Theseus releases) on this state:
  make ui          # prints the URLs and the login; Ctrl-C stops everything
EOT
