"""The per-process Redis clients for state the system keeps beside the broker (statuses, delivery counts,
dead letters, analytics, metrics). One per process and URL, held by :mod:`fabric.registry`: built lazily,
and never shared with a forked child, which builds its own."""

from __future__ import annotations

import redis

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
