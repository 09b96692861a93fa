# shellcheck shell=bash
# The steps `make demo` and `make demo-real` share, sourced after scripts/demo-env.sh (BIN, ROOT, LOGS):
# a timestamped step header, the Airflow metadata DB, and a DAG run through Airflow.

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

migrate_airflow_db() {
  step "Airflow metadata DB: $AIRFLOW_HOME/airflow.db"
  "$BIN/airflow" db migrate > "$LOGS/airflow-db-migrate.log" 2>&1 || { tail -20 "$LOGS/airflow-db-migrate.log"; exit 1; }
}

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
