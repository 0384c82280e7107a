"""Flower's settings, taken from the project's settings:

    celery -A tasks.app flower --conf=deploy/flower/flowerconfig.py

Flower executes this file after reading its ``FLOWER_*`` environment variables and before its command line,
so a command-line option still wins.

- Authentication: basic auth with ``FLOWER_USER`` / ``FLOWER_PASSWORD`` (the password is read here, so it
  never appears on a command line). For OAuth instead, set Flower's own variables ``FLOWER_AUTH_PROVIDER``
  (e.g. ``flower.views.auth.GithubLoginHandler``), ``FLOWER_AUTH`` (a regex of allowed emails),
  ``FLOWER_OAUTH2_KEY``, ``FLOWER_OAUTH2_SECRET`` and ``FLOWER_OAUTH2_REDIRECT_URI``: basic auth is then off.
- Persistence: the task and worker state is kept in ``DATA_DIR/flower.db``, saved on shutdown and every
  minute, so a crash loses at most a minute of history.
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
state_save_interval = 60_000  # milliseconds
# Workers gone for an hour disappear from the dashboard instead of showing as offline forever.
purge_offline_workers = 3600

if not options.auth_provider:
    basic_auth = [f"{_settings.flower_user}:{_settings.flower_password.get_secret_value()}"]
