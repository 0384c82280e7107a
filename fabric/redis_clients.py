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
    """Close and forget this process's clients (tests that restart Redis or change ``REDIS_URL``).

    Clients inherited from a parent process are forgotten without being touched: closing one would shut
    down the socket the parent still uses, and its pool's lock may have been held by a parent thread at the
    moment of the fork.
    """
    pid = os.getpid()
    with _lock:
        for (owner, _), client in list(_clients.items()):
            if owner == pid:
                client.close()
        _clients.clear()


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread of the parent when it forked; nothing in the child
    # holds it now.
    global _lock  # noqa: PLW0603 - replaced once per fork, before any thread of the child can use it
    _lock = threading.Lock()
    for key in [k for k in _clients if k[0] != os.getpid()]:
        del _clients[key]


os.register_at_fork(after_in_child=_after_fork_in_child)
