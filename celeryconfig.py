"""Celery's configuration module for this project: ``app.config_from_object("celeryconfig")``.

Every value comes from :func:`fabric.celery_config.build`, computed from the settings in force when Celery
first reads its configuration (not when this module is imported), so the environment of the process that
configures the app applies: a worker's, a test's, a CLI override. ``tasks.app`` loads it this way.
"""

from __future__ import annotations

from typing import Any

from config import Settings, get_settings
from fabric.celery_config import build

_built: tuple[Settings, dict[str, Any]] | None = None


def _configuration() -> dict[str, Any]:
    global _built  # noqa: PLW0603 - built once per settings object, which reload_settings() replaces
    settings = get_settings()
    if _built is None or _built[0] is not settings:
        _built = (settings, build(settings))
    return _built[1]


def __getattr__(name: str) -> Any:
    try:
        return _configuration()[name]
    except KeyError:
        raise AttributeError(f"module 'celeryconfig' has no setting {name!r}") from None


def __dir__() -> list[str]:
    return sorted(_configuration())
