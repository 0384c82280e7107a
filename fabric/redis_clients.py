"""The per-process Redis clients for state the system keeps beside the broker (statuses, delivery counts,
dead letters, analytics, metrics). One per process and URL, held by :mod:`fabric.registry`: built lazily,
and never shared with a forked child, which builds its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script

from config import get_settings
from fabric.registry import PerProcess


def _connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)


_clients: PerProcess[redis.Redis] = PerProcess("redis clients", _connect)


def get_redis(url: str | None = None) -> redis.Redis:
    """A client for ``url`` (default ``REDIS_URL``), one per process and URL."""
    return _clients.get(url or get_settings().redis_url)


def reset_redis() -> None:
    """Close and forget this process's clients (tests that restart Redis or change ``REDIS_URL``)."""
    _clients.reset()


class LuaScript:
    """A Lua script whose SHA is computed once per process, run on whichever client (or pipeline) is
    passed: EVALSHA, loading the script first on a server that lacks it. ``client.register_script`` on
    every call would hash and encode the script again each time, on paths run once per task."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._script: Script | None = None

    def __call__(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        script = self._script
        if script is None:
            script = self._script = client.register_script(self.source)
        return script(keys=list(keys), args=list(args), client=client)
