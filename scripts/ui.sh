#!/usr/bin/env bash
# make ui: the MLflow UI and Airflow (api-server, scheduler, dag-processor) on the demo's state and with the
# demo's settings (scripts/demo-env.sh), on 127.0.0.1 only. Prints the URLs and the login; Ctrl-C (SIGINT)
# or SIGTERM stops every process it started: each server runs in its own process group, signalled whole
# (uvicorn workers, executor workers, log server), SIGKILL after THESEUS_UI_STOP_SECONDS (default 20).
#
# Settings (environment): THESEUS_UI_MLFLOW_PORT (5000), THESEUS_UI_AIRFLOW_PORT (8080), THESEUS_STATE
# (.theseus), BIN (.venv/bin). The servers' own logs go to $STATE/logs/ui/.
# `airflow standalone` is not used: it starts its components as `airflow` from PATH, which is not the venv's.
set -euo pipefail
# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"
MLFLOW_PORT="${THESEUS_UI_MLFLOW_PORT:-5000}"
AIRFLOW_PORT="${THESEUS_UI_AIRFLOW_PORT:-8080}"
STOP_SECONDS="${THESEUS_UI_STOP_SECONDS:-20}"
die() { echo "make ui: error: $*" >&2; exit 2; }

for var in THESEUS_UI_MLFLOW_PORT:$MLFLOW_PORT THESEUS_UI_AIRFLOW_PORT:$AIRFLOW_PORT; do
  port="${var#*:}"
  [[ "$port" =~ ^[0-9]{1,5}$ ]] && (( port >= 1 && port <= 65535 )) || die "${var%%:*} is not a port number: '$port'"
done
[ "$MLFLOW_PORT" != "$AIRFLOW_PORT" ] || die "MLflow and Airflow cannot share port $MLFLOW_PORT"
[[ "$STOP_SECONDS" =~ ^[0-9]+$ ]] || die "THESEUS_UI_STOP_SECONDS is not a whole number of seconds: '$STOP_SECONDS'"
[ -x "$BIN/airflow" ] && [ -x "$BIN/mlflow" ] || die "no airflow/mlflow in $BIN: run 'make venv' (or set BIN)"
port_taken() {  # can this port be bound on 127.0.0.1 right now? (SO_REUSEADDR: TIME_WAIT does not count)
  ! "$BIN/python" -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' \
    "$1" 2>/dev/null
}
port_taken "$MLFLOW_PORT" && die "port $MLFLOW_PORT (MLflow) on 127.0.0.1 is taken; set THESEUS_UI_MLFLOW_PORT to a free one"
port_taken "$AIRFLOW_PORT" && die "port $AIRFLOW_PORT (Airflow) on 127.0.0.1 is taken; set THESEUS_UI_AIRFLOW_PORT to a free one"

export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$AIRFLOW_PORT" AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
export AIRFLOW__API__WORKERS="${AIRFLOW__API__WORKERS:-1}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW_PORT/execution/"  # the scheduler's task runs
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export THESEUS_MLFLOW_UI_URL="http://127.0.0.1:$MLFLOW_PORT"  # the releases view's and the task links' target
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"  # LocalExecutor: one worker process per slot
# Airflow's simple auth manager generates each user's password once and keeps it in this file:
PASSWORDS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
UI_LOGS="$LOGS/ui"; mkdir -p "$UI_LOGS"

if [ ! -s "$AIRFLOW_HOME/airflow.db" ]; then  # `make ui` before `make demo`: an empty but working Airflow
  echo "no Airflow DB under $AIRFLOW_HOME yet (run 'make demo' for the demo's runs); creating an empty one"
  { "$BIN/airflow" db migrate && "$BIN/airflow" pools set gpu 1 "theseus-ops GPU transport slots"; } \
    >> "$UI_LOGS/db-migrate.log" 2>&1 || { tail -20 "$UI_LOGS/db-migrate.log" >&2; exit 1; }
fi

set -m  # job control: each server below gets its own process group (pgid = its pid)
PIDS=() NAMES=() STOPPING=0
launch() {  # launch NAME CMD...: in $STATE (no stray files in the checkout), stdin closed, output to its log
  local name="$1"; shift
  (cd "$STATE" && exec "$@") < /dev/null >> "$UI_LOGS/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
}
tree() {  # tree PID...: those processes and all their descendants (a task's process has its own session)
  ps -eo pid=,ppid=,stat= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    $3 !~ /^Z/ { parent[$1] = $2 }
    END { do { more = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; more = 1 } } while (more)
          for (p in keep) if (p in parent) print p }'
}
signal_all() {  # signal_all SIG PID...: each process and its whole process group
  local sig="$1" pid pgid; shift
  for pid in "$@"; do
    pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" || true
    [ -n "$pgid" ] && [ "$pgid" != "$$" ] && kill "-$sig" -- "-$pgid" 2>/dev/null
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}
stop() {
  [ "$STOPPING" = 1 ] && return 0
  STOPPING=1; trap '' INT TERM
  local i left=()
  [ ${#PIDS[@]} -gt 0 ] || return 0
  echo "stopping ${NAMES[*]} ..."
  mapfile -t left < <(tree "${PIDS[@]}")
  signal_all TERM "${left[@]}"
  for (( i = 0; i < STOP_SECONDS * 5 && ${#left[@]} > 0; i++ )); do
    sleep 0.2
    mapfile -t left < <(tree "${left[@]}")  # the survivors, and anything they started meanwhile
  done
  [ ${#left[@]} -eq 0 ] || { echo "killing ${#left[@]} process(es) still running after ${STOP_SECONDS} s"; signal_all KILL "${left[@]}"; }
  wait 2>/dev/null || true
  echo "stopped"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop' EXIT

dead() {  # dead: the name of a server that has exited, if any
  local i
  for i in "${!PIDS[@]}"; do kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "${NAMES[$i]}"; return 0; }; done
  return 1
}
wait_http() {  # wait_http URL SECONDS
  local i name
  for (( i = 0; i < $2; i++ )); do
    curl -s -m 5 -o /dev/null "$1" && return 0
    if name="$(dead)"; then
      echo "make ui: $name exited; the end of $UI_LOGS/$name.log:" >&2; tail -20 "$UI_LOGS/$name.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "make ui: $1 did not answer within $2 s; logs in $UI_LOGS" >&2; exit 1
}

echo "starting MLflow and Airflow on the state in $STATE (server logs: $UI_LOGS)"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false launch mlflow "$BIN/mlflow" server --backend-store-uri "$THESEUS_MLFLOW_TRACKING_URI" \
  --default-artifact-root "$THESEUS_MLFLOW_ARTIFACT_LOCATION" --no-serve-artifacts --host 127.0.0.1 \
  --port "$MLFLOW_PORT" --workers 1 --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT"
launch api-server "$BIN/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW_PORT"
wait_http "http://127.0.0.1:$AIRFLOW_PORT/api/v2/monitor/health" 300
# after the api-server: the scheduler's task processes talk to its execution API from their first try
launch scheduler "$BIN/airflow" scheduler
launch dag-processor "$BIN/airflow" dag-processor
wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 180

password="$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("admin", "?"))' "$PASSWORDS" \
  2>/dev/null || echo "?")"
cat <<EOT

  MLflow : http://127.0.0.1:$MLFLOW_PORT
  Airflow: http://127.0.0.1:$AIRFLOW_PORT   login: admin / $password
           (the password is generated once and kept in $PASSWORDS)
           DAGs -> a run -> a task -> Logs; Browse -> Theseus releases
  Ctrl-C stops everything.
EOT

while :; do  # until a signal (the traps stop everything) or a server dies (then the rest are stopped too)
  wait -n 2>/dev/null || true
  if name="$(dead)"; then
    echo "make ui: $name exited; the end of $UI_LOGS/$name.log:" >&2; tail -20 "$UI_LOGS/$name.log" >&2; exit 1
  fi
done
