"""The per-process Redis client for state the system keeps beside the broker (statuses, delivery counts,
dead letters, analytics). Built lazily and rebuilt after a fork, so prefork children never share a socket."""

from __future__ import annotations

import os
import threading

import redis

from config import get_settings

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}


def get_redis(url: str | None = None) -> redis.Redis:
    """A client for ``url`` (default ``REDIS_URL``), one per process and URL."""
    target = url or get_settings().redis_url
    key = (os.getpid(), target)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    target, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
                )
                _clients[key] = client
    return client


def reset_redis() -> None:
    """Forget every client (tests that restart Redis or change ``REDIS_URL``)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
