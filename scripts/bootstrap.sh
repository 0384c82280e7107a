#!/usr/bin/env bash
# Sets up what is missing on a fresh Debian machine: redis-server and python3-venv from apt (with sudo when
# not root; for dev also the servers and tools the tests run: rabbitmq-server, prometheus, chromium, nodejs
# and npm), then .venv with the project installed. Re-running it is cheap: it reinstalls only when
# pyproject.toml changed.   Usage: scripts/bootstrap.sh [runtime|dev]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-runtime}
PY=${PYTHON:-python3}

if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "$profile" = dev ]; then
  # The reliability suite runs on RabbitMQ as well as Redis, on a private node it starts itself.
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  # promtool checks the alert rules; a real Prometheus scrapes the deploy's targets.
  command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
  # The browser checks (tests/api/test_docs_pages.py, tests/test_flower.py) render the API docs and Flower
  # in headless Chromium.
  command -v chromium >/dev/null || missing+=(chromium)
  # A producer in another language: celery-node, installed by the tests from tests/support/celery_node.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]} with apt-get"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
extra=""
[ "$profile" = dev ] && extra="[dev]"
stamp=".venv/.installed-${profile}-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> installing the project${extra} into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra}"
  touch "$stamp"
fi
