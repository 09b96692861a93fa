#!/usr/bin/env bash
# make demo-real: the same two DAGs as `make demo`, run the same way, on the real pretrained fixtures
# (SmolLM2-135M-Instruct and all-MiniLM-L6-v2 fine-tuned on BBC News; theseus_ops/demo/real).
# State lives under THESEUS_STATE (default .theseus/real-demo), apart from `make demo`'s; the fixtures
# are built once under THESEUS_REAL_ROOT (default .theseus/real) and reused. A second run reuses
# everything and registers nothing new.
set -euo pipefail
export THESEUS_STATE="${THESEUS_STATE:-$(cd "$(dirname "$0")/.." && pwd)/.theseus/real-demo}"
# CPU-sized defaults (each overridable): two methods, two α, a small calibration recipe (48 task rows and
# 16 held-out windows); the library's default weights fill (the SmolLM2 theseus prepare is the long step)
export THESEUS_METHODS="${THESEUS_METHODS:-pad,theseus}" THESEUS_ALPHAS="${THESEUS_ALPHAS:-0.5,1}"
export THESEUS_CALIBRATION="${THESEUS_CALIBRATION:-task=48,text=16,max_length=128}"
# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"  # BIN, ROOT, STATE, LOGS and every setting `make ui` shares
# shellcheck source=scripts/demo-steps.sh
source "$(dirname "$0")/demo-steps.sh"  # step, migrate_airflow_db, run_dag
REAL_ROOT="${THESEUS_REAL_ROOT:-$ROOT/.theseus/real}"
ROWS="${THESEUS_DEMO_ROWS:-}"  # keep the first N val and test rows (empty: every row)
PREFIX="${THESEUS_DEMO_PREFIX:-real-}"
MODELS="${THESEUS_DEMO_MODELS:-smollm2,minilm}"  # base lines, as <prefix><model>
SEED=("$BIN/python" -m theseus_ops.demo.real.seed --fixtures-root "$REAL_ROOT" --datasets-root "$STATE/datasets"
      --prefix "$PREFIX" --models "$MODELS" ${ROWS:+--rows "$ROWS"})

"$BIN/python" -c "from theseus_ops.demo.real.sources import INSTALL_HINT, missing; import sys; m = missing(); \
m and sys.exit(f'make demo-real: the real extra is missing ({\", \".join(m)}); {INSTALL_HINT}')"

t0=$SECONDS
migrate_airflow_db

step "real fixtures (built once under $REAL_ROOT); v1 of $MODELS (as $PREFIX*) and their task vectors cataloged; v2-wide landed"
"${SEED[@]}" --target v2-wide 2> "$LOGS/seed.log" | tail -1 || { tail -20 "$LOGS/seed.log"; exit 1; }

run_dag theseus_watch_releases
run_dag theseus_transport_release

step "release summaries"
"${SEED[@]}" --report 2>> "$LOGS/seed.log"

step "consumer: a fresh process loads each candidate by alias (load_registered) and predicts one test row"
"${SEED[@]}" --consume 2>> "$LOGS/seed.log"

cat <<EOT

Done in $((SECONDS - t0)) s. Run 'make demo-real' again: everything is reused, nothing is registered twice.
Open both UIs on this state:  THESEUS_STATE=$STATE make ui
EOT
