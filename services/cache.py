"""The guide's CacheService: JSON values in Redis under ``cache:`` keys, with a TTL (default one hour).

A cache is an optimisation, so a Redis that does not answer must not break the caller: a failed read logs a
warning and answers a miss, a failed write or delete logs a warning and returns False (the guide's contract).
Only Redis failures are treated so; a bad key or TTL from the caller raises InvalidInput.

Tasks call ``get``/``set``/``delete``; async code (the guide awaits them) calls ``aget``/``aset``/``adelete``,
which run the same calls in a worker thread so they work under any event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fabric.errors import InvalidInput
from fabric.registry import PerProcess

log = logging.getLogger(__name__)

KEY_PREFIX = "cache:"
DEFAULT_TTL = 3600


class CacheService:
    """JSON values under ``{prefix}{key}`` in Redis, each with a TTL."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = KEY_PREFIX,
        default_ttl: int = DEFAULT_TTL,
        timeout: float = 1.0,
    ) -> None:
        """Cache in the Redis at ``url`` (default ``effective_cache_url``) or through ``client``. ``timeout``
        bounds each Redis call, so a Redis that hangs costs a caller at most about that long. The client is
        built on first use."""
        if default_ttl < 1:
            raise InvalidInput(f"default_ttl must be at least 1 second, got {default_ttl}")
        self._url = url
        self._client = client
        self._lock = threading.Lock()
        self.prefix = prefix
        self.default_ttl = default_ttl
        self.timeout = timeout

    @property
    def client(self) -> redis.Redis:
        """The Redis client, built on first use. A process builds its own cache (:func:`get_cache`)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from config import get_settings

                    url = self._url or get_settings().effective_cache_url
                    # One quick retry: a cache should answer a miss fast, not wait out a backoff.
                    self._client = redis.Redis.from_url(
                        url,
                        socket_connect_timeout=self.timeout,
                        socket_timeout=self.timeout,
                        retry=Retry(NoBackoff(), 1),
                        health_check_interval=30,
                    )
        return self._client

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"cache key must be a non-empty string, got {key!r}")
        return self.prefix + key

    def get(self, key: str) -> Any | None:
        """The value cached under ``key``, or None when there is none, it expired, it is not JSON, or
        Redis failed (logged as a warning). Raises InvalidInput for an empty key."""
        full_key = self._key(key)
        try:
            raw = self.client.get(full_key)
        except redis.RedisError as exc:
            log.warning("cache read of %s failed, answering a miss: %s", full_key, exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("cache value of %s is not JSON, answering a miss: %s", full_key, exc)
            return None

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Cache ``value`` as JSON under ``key`` for ``ttl`` seconds (default ``default_ttl``). Values JSON
        cannot hold (datetimes, UUIDs ...) are stored as their ``str()``, as the guide does. Returns True when
        stored, False when Redis failed (logged). Raises InvalidInput for an empty key or a TTL below 1."""
        full_key = self._key(key)
        seconds = self.default_ttl if ttl is None else ttl
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise InvalidInput(f"cache ttl must be a whole number of seconds >= 1, got {ttl!r}")
        payload = json.dumps(value, default=str)
        try:
            self.client.set(full_key, payload, ex=seconds)
        except redis.RedisError as exc:
            log.warning("cache write of %s failed: %s", full_key, exc)
            return False
        return True

    def delete(self, key: str) -> bool:
        """Forget ``key``. Returns True when Redis answered (whether or not the key existed), False when it
        failed (logged). Raises InvalidInput for an empty key."""
        full_key = self._key(key)
        try:
            self.client.delete(full_key)
        except redis.RedisError as exc:
            log.warning("cache delete of %s failed: %s", full_key, exc)
            return False
        return True

    async def aget(self, key: str) -> Any | None:
        """``get`` for async callers."""
        return await asyncio.to_thread(self.get, key)

    async def aset(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """``set`` for async callers."""
        return await asyncio.to_thread(self.set, key, value, ttl)

    async def adelete(self, key: str) -> bool:
        """``delete`` for async callers."""
        return await asyncio.to_thread(self.delete, key)

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "backend": "redis", ...}`` from a PING."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return {"status": "unhealthy", "backend": "redis", "error": str(exc)}
        return {"status": "healthy", "backend": "redis"}

    def close(self) -> None:
        """Close the client's connections (it reconnects on next use)."""
        if self._client is not None:
            self._client.close()


_cache: PerProcess[CacheService] = PerProcess("cache", CacheService)


def get_cache() -> CacheService:
    """The process's cache on ``effective_cache_url``, built on first call (see :mod:`fabric.registry`)."""
    return _cache.get()


def reset_cache() -> None:
    """Close and forget the process's cache so the next call reads settings again (tests)."""
    _cache.reset()
