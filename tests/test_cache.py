"""The cache on the session Redis, and on a Redis that goes away."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from fabric.errors import InvalidInput
from services.cache import CacheService, get_cache, reset_cache
from tests.support.servers import RedisServer, free_port


@pytest.fixture
def cache(redis_client: redis.Redis) -> CacheService:
    reset_cache()
    return get_cache()


def test_values_round_trip_as_json_under_the_cache_prefix(
    cache: CacheService, redis_client: redis.Redis
) -> None:
    workflow = {"id": "wf-1", "steps": [{"type": "http", "retries": 3}], "active": True, "score": 0.5}
    assert cache.set("workflow:wf-1", workflow)
    assert cache.get("workflow:wf-1") == workflow
    assert redis_client.get("cache:workflow:wf-1") is not None
    assert redis_client.get("workflow:wf-1") is None
    for value in ("text", 42, [1, "two"], False):
        cache.set("scalar", value)
        assert cache.get("scalar") == value


def test_default_ttl_is_an_hour_and_a_ttl_can_be_given(
    cache: CacheService, redis_client: redis.Redis
) -> None:
    cache.set("default", 1)
    cache.set("short", 1, ttl=1800)
    assert 3590 <= redis_client.ttl("cache:default") <= 3600
    assert 1790 <= redis_client.ttl("cache:short") <= 1800


def test_values_json_cannot_hold_are_stored_as_text(cache: CacheService) -> None:
    when = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    ident = uuid.UUID(int=7)
    cache.set("odd", {"when": when, "id": ident})
    assert cache.get("odd") == {"when": str(when), "id": str(ident)}


def test_a_miss_and_a_delete(cache: CacheService, redis_client: redis.Redis) -> None:
    assert cache.get("never-set") is None
    cache.set("doomed", {"a": 1})
    assert cache.delete("doomed") is True
    assert cache.get("doomed") is None
    assert redis_client.exists("cache:doomed") == 0
    assert cache.delete("doomed") is True  # deleting what is gone is still a success


def test_a_value_that_is_not_json_is_a_logged_miss(
    cache: CacheService, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set("cache:corrupt", b"\xff{not json")
    with caplog.at_level(logging.WARNING, logger="services.cache"):
        assert cache.get("corrupt") is None
    assert "cache:corrupt" in caplog.text


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True])
def test_a_bad_ttl_is_refused(cache: CacheService, ttl: object) -> None:
    with pytest.raises(InvalidInput, match="ttl"):
        cache.set("k", 1, ttl=ttl)  # type: ignore[arg-type]


def test_an_empty_key_is_refused(cache: CacheService) -> None:
    for call in (lambda: cache.get(""), lambda: cache.set("", 1), lambda: cache.delete("")):
        with pytest.raises(InvalidInput, match="cache key"):
            call()


def test_the_async_twins_work_under_any_event_loop(cache: CacheService) -> None:
    async def flow() -> tuple[object, bool, object]:
        assert await cache.aset("workflow:wf-2", {"name": "async"}, ttl=1800)
        got = await cache.aget("workflow:wf-2")
        deleted = await cache.adelete("workflow:wf-2")
        return got, deleted, await cache.aget("workflow:wf-2")

    assert asyncio.run(flow()) == ({"name": "async"}, True, None)
    assert asyncio.run(flow()) == ({"name": "async"}, True, None)  # a second loop: no stale connections


def test_get_cache_is_one_instance_until_reset(redis_client: redis.Redis) -> None:
    reset_cache()
    first = get_cache()
    assert get_cache() is first
    assert first.health_check() == {"status": "healthy", "backend": "redis"}
    reset_cache()
    assert get_cache() is not first


def test_a_redis_that_goes_away_answers_misses_and_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    cache = CacheService(server.url)
    try:
        assert cache.set("k", {"v": 1})
        assert cache.get("k") == {"v": 1}
        server.stop()
        with caplog.at_level(logging.WARNING, logger="services.cache"):
            assert cache.get("k") is None
            assert cache.set("k", {"v": 2}) is False
            assert cache.delete("k") is False
            assert asyncio.run(cache.aget("k")) is None
        assert [r.levelname for r in caplog.records].count("WARNING") == 4
        assert "cache read of cache:k failed" in caplog.text
        assert cache.health_check()["status"] == "unhealthy"
        # Back on the same port: the same service reconnects without help.
        server.start()
        assert cache.set("k", {"v": 3})
        assert cache.get("k") == {"v": 3}
    finally:
        cache.close()
        server.stop()


def test_a_redis_that_never_answered_is_a_miss_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    cache = CacheService(f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="services.cache"):
        assert cache.get("anything") is None
        assert cache.set("anything", 1) is False
    assert "Connection refused" in caplog.text or "Error 111" in caplog.text


def test_a_redis_that_hangs_costs_at_most_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    # A socket that accepts connections and never answers, like a Redis stuck behind a full disk.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cache = CacheService(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout=0.2)
        with caplog.at_level(logging.WARNING, logger="services.cache"):
            assert cache.get("k") is None
            assert cache.set("k", 1) is False
        assert "Timeout" in caplog.text
        cache.close()
