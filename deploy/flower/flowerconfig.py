"""Flower's settings, taken from the project's settings:

    celery -A tasks.app flower --conf=deploy/flower/flowerconfig.py

Flower executes this file after reading its ``FLOWER_*`` environment variables and before its command line,
so a command-line option still wins.

- Authentication: basic auth with ``FLOWER_USER`` / ``FLOWER_PASSWORD`` (the password is read here, so it
  never appears on a command line). For OAuth instead, set Flower's own variables ``FLOWER_AUTH_PROVIDER``
  (e.g. ``flower.views.auth.GithubLoginHandler``), ``FLOWER_AUTH`` (a regex of allowed emails),
  ``FLOWER_OAUTH2_KEY``, ``FLOWER_OAUTH2_SECRET`` and ``FLOWER_OAUTH2_REDIRECT_URI``: basic auth is then off.
- Persistence: the task and worker state is kept in ``DATA_DIR/flower.db``, loaded at start, saved every
  ``FLOWER_STATE_SAVE_INTERVAL`` milliseconds (default a minute) and on shutdown, so a crash (``kill -9``, an
  evicted pod) loses at most one interval of history. Flower keeps the newest 100,000 tasks (its
  ``max_tasks``); older ones leave the dashboard, never the result backend.
- Workers offline for ``FLOWER_PURGE_OFFLINE_WORKERS`` seconds (default an hour) leave the dashboard and
  Flower's metrics, so a fleet that autoscaling stops and starts does not pile up offline workers.
- ``/metrics`` (Prometheus) and ``/healthcheck`` answer without authentication, as Flower ships them.
"""

from tornado.options import options

from config import get_settings

_settings = get_settings()

port = _settings.flower_port
persistent = True
# Flower saves with shelve, which does not create the directory (it would fail at shutdown, losing the state).
_settings.data_dir.mkdir(parents=True, exist_ok=True)
db = str(_settings.data_dir / "flower.db")
state_save_interval = _settings.flower_state_save_interval  # milliseconds
purge_offline_workers = _settings.flower_purge_offline_workers  # seconds

if not options.auth_provider:
    basic_auth = [f"{_settings.flower_user}:{_settings.flower_password.get_secret_value()}"]
