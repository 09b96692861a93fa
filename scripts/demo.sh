#!/usr/bin/env bash
# make demo: the whole product on embedded defaults, through Airflow for real.
# State lives under .theseus/: Airflow's SQLite DB, MLflow's SQLite DB and artifact store, the landing
# zone as a local directory. A second run reuses everything and registers nothing new.
set -euo pipefail
FAMILY="${THESEUS_DEMO_FAMILY:-theseus-tiny}"
SCALE="${THESEUS_DEMO_SCALE:-tiny}"
# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"  # BIN, ROOT, STATE, LOGS and every setting `make ui` shares

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
t0=$SECONDS
step "Airflow metadata DB: $AIRFLOW_HOME/airflow.db"
"$BIN/airflow" db migrate > "$LOGS/airflow-db-migrate.log" 2>&1 || { tail -20 "$LOGS/airflow-db-migrate.log"; exit 1; }

step "the $SCALE family (built once, cached under $STATE/families); v1 and its task vectors cataloged; v2-wide-shuffled landed"
"$BIN/python" -m theseus_ops.demo.seed --scale "$SCALE" --family "$FAMILY" --families-root "$STATE/families" \
    --datasets-root "$STATE/datasets" 2> "$LOGS/seed.log" | tail -1

run_dag() {  # dag.test() through Airflow; the task table to the terminal, the runner's output to a new file
  local dag="$1" out; shift
  out="$LOGS/$dag.$(date -u +%Y%m%dT%H%M%SZ).log"  # one file per run: a second demo keeps the first one's
  step "airflow: $dag (log: $out)"
  if ! "$BIN/python" "$ROOT/plugins/theseus_airflow/runner.py" "$dag" "$@" > "$out" 2>&1; then
    grep -v '^{' "$out" | grep -v '^20[0-9][0-9]-' || true
    echo "the $dag run failed; see $out" >&2; exit 1
  fi
  grep -A100 "^$dag " "$out"
}
run_dag theseus_watch_releases
run_dag theseus_transport_release

step "release summary"
"$BIN/python" -m theseus_ops.demo.seed --report --family "$FAMILY" 2>> "$LOGS/seed.log"

cat <<EOT

Done in $((SECONDS - t0)) s. Run 'make demo' again: everything is reused, nothing is registered twice.
Open both UIs (MLflow, and Airflow with the task logs and Browse -> Theseus releases) on this state:
  make ui          # prints the URLs and the login; Ctrl-C stops everything
EOT
