#!/usr/bin/env bash
# The embedded default: SQLite, a filesystem broker, the local executor, artefacts on disk.
# No server needed. Starts the ASGI server and a Celery worker (with the reconciler's beat);
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export GATEHOUSE_PROFILE=dev
export GATEHOUSE_VAR_DIR="${GATEHOUSE_VAR_DIR:-$PWD/var}"
HOST="${GATEHOUSE_HOST:-127.0.0.1}"
PORT="${GATEHOUSE_PORT:-8000}"
mkdir -p "$GATEHOUSE_VAR_DIR"

$PY manage.py migrate --noinput -v 0
$PY manage.py seed_demo

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

.venv/bin/celery -A gateway.celery worker -B --loglevel=WARNING --concurrency=2 \
  --schedule="$GATEHOUSE_VAR_DIR/celerybeat-schedule" &
pids+=($!)
$PY manage.py audit_sequencer --loop &
pids+=($!)
.venv/bin/daphne -b "$HOST" -p "$PORT" gateway.asgi:application &
pids+=($!)

cat <<MSG

  Gatehouse is up at http://$HOST:$PORT/  (API: /api/v1/, OpenAPI schema: /api/schema/)
  Log in as analyst / author / admin / auditor with the password "gatehouse"
  (tokens for the command line are printed above). Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"
