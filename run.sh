#!/usr/bin/env bash
# Run it: sets up what is missing (redis-server, python3-venv, .venv), starts Redis if none answers at
# REDIS_URL, a Celery worker for every queue and Flower, runs the demo, and serves until Ctrl-C.
# Arguments go to `wft run`, e.g. ./run.sh --exit-after-demo
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh runtime
exec .venv/bin/python -m cli run "$@"
