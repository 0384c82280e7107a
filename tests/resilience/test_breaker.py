"""The circuit breaker against the session's real Redis: states shared across processes, half-open probe,
sync and async callables, and Redis itself down."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import uuid
from collections.abc import Iterator

import pytest
import redis

from config import reload_settings
from fabric.errors import BackendUnavailable, InvalidInput
from fabric.redis_clients import reset_redis
from services.resilience import (
    KEY_PREFIX,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    circuit,
    get_breaker,
    guarded,
)
from tests.support.servers import free_port, run_in_spawned_interpreter


class Backend:
    """A callable standing for a backend: it fails while ``down`` and counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def __call__(self, value: int = 1) -> int:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("backend down")
        return value


@pytest.fixture
def name(redis_client: redis.Redis) -> Iterator[str]:
    reset_redis()
    yield f"test-{uuid.uuid4().hex[:8]}"
    reset_redis()


def trip(breaker: CircuitBreaker, backend: Backend) -> None:
    backend.down = True
    for _ in range(breaker.failure_threshold):
        with pytest.raises(BackendUnavailable):
            breaker.call(backend)


def test_closed_breaker_passes_results_and_errors(name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=3, timeout=30)
    backend = Backend()
    assert breaker.call(backend, 7) == 7
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(InvalidInput):
        breaker.call(lambda: (_ for _ in ()).throw(InvalidInput("bad")))
    assert breaker.failure_count == 0  # a permanent error means the backend answered


def test_opens_after_threshold_and_fails_fast_with_a_transient_error(
    name: str, redis_client: redis.Redis
) -> None:
    breaker = CircuitBreaker(name, failure_threshold=3, timeout=30)
    backend = Backend()
    trip(breaker, backend)
    assert breaker.state is CircuitState.OPEN
    # The OPEN state is a key in Redis whose expiry is the timeout.
    ttl = redis_client.pttl(f"{KEY_PREFIX}{name}:open")
    assert 0 < ttl <= 30_000
    with pytest.raises(CircuitOpen) as raised:
        breaker.call(backend)
    assert isinstance(raised.value, BackendUnavailable)  # so Celery retries the task
    assert raised.value.retry_after is not None and raised.value.retry_after > 0
    assert backend.calls == 3  # the fourth call never reached the backend
    # Celery pickles exceptions it stores or retries on: the type and fields survive.
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is CircuitOpen
    assert (copy.name, copy.retry_after, str(copy)) == (name, raised.value.retry_after, str(raised.value))


def test_success_resets_the_count(name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=3, timeout=30)
    backend = Backend()
    backend.down = True
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            breaker.call(backend)
    assert breaker.failure_count == 2
    backend.down = False
    breaker.call(backend)
    assert breaker.failure_count == 0


def test_failures_outside_the_window_do_not_count(name: str, redis_client: redis.Redis) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30, window=30)
    backend = Backend()
    backend.down = True
    with pytest.raises(BackendUnavailable):
        breaker.call(backend)
    # Age the recorded failure past the window, as time would.
    key = f"{KEY_PREFIX}{name}:failures"
    ((member, score),) = redis_client.zrange(key, 0, -1, withscores=True)
    redis_client.zadd(key, {member: score - 31_000})
    with pytest.raises(BackendUnavailable):
        breaker.call(backend)
    assert breaker.state is CircuitState.CLOSED


def test_half_open_lets_one_probe_through_and_success_closes(name: str, redis_client: redis.Redis) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30)
    backend = Backend()
    trip(breaker, backend)
    redis_client.delete(f"{KEY_PREFIX}{name}:open")  # the timeout ran out
    assert breaker.state is CircuitState.HALF_OPEN
    other = CircuitBreaker(name, failure_threshold=2, timeout=30)
    backend.down = False
    seen: list[str] = []

    def probe() -> int:
        # While the probe is out, every other caller fails fast.
        with pytest.raises(CircuitOpen):
            other.call(backend)
        seen.append("refused")
        return backend()

    assert breaker.call(probe) == 1
    assert seen == ["refused"]
    assert breaker.state is CircuitState.CLOSED
    assert other.call(backend) == 1


def test_failed_probe_opens_again(name: str, redis_client: redis.Redis) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30)
    backend = Backend()
    trip(breaker, backend)
    redis_client.delete(f"{KEY_PREFIX}{name}:open")
    with pytest.raises(BackendUnavailable):
        breaker.call(backend)  # the probe, still down
    assert breaker.state is CircuitState.OPEN
    calls = backend.calls
    with pytest.raises(CircuitOpen):
        breaker.call(backend)
    assert backend.calls == calls


def _call_in_child(name: str, queue: multiprocessing.Queue[str]) -> None:
    reset_redis()  # the child builds its own connection
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30)
    backend = Backend()
    try:
        breaker.call(backend)
    except CircuitOpen as exc:
        queue.put(f"open:{backend.calls}:{exc}")
    else:
        queue.put(f"called:{backend.calls}")


def _shared_state_scenario(name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30)
    trip(breaker, Backend())
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_call_in_child, args=(name, queue))
    child.start()
    child.join(30)
    answer = queue.get(timeout=5)
    assert answer.startswith("open:0:"), answer  # refused without calling its backend
    breaker.reset()
    child = ctx.Process(target=_call_in_child, args=(name, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == "called:1"


def test_state_is_shared_across_processes(name: str) -> None:
    run_in_spawned_interpreter(_shared_state_scenario, name)


def test_async_callables_are_awaited_not_tripped(name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30)
    calls = 0

    async def fetch(value: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return value

    async def down() -> int:
        raise BackendUnavailable("down")

    async def scenario() -> None:
        # The upstream awaited plain functions and tripped on every call; both kinds work here.
        for _ in range(5):
            assert await breaker.acall(fetch, 3) == 3
            assert await breaker.call(fetch, 4) == 4
            assert breaker.call(lambda: 5) == 5
            assert await breaker.call(lambda: fetch(6)) == 6  # a plain lambda returning a coroutine
        assert breaker.state is CircuitState.CLOSED
        for _ in range(2):
            with pytest.raises(BackendUnavailable):
                await breaker.call(down)
        with pytest.raises(CircuitOpen):
            await breaker.acall(fetch, 1)

    asyncio.run(scenario())
    assert calls == 15


def test_decorator_for_sync_and_async(name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=1, timeout=30)

    @breaker
    def double(x: int) -> int:
        return 2 * x

    @breaker
    async def triple(x: int) -> int:
        return 3 * x

    assert double(2) == 4
    assert asyncio.run(triple(2)) == 6


def test_redis_down_falls_back_to_local_state(name: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    breaker = CircuitBreaker(name, failure_threshold=2, timeout=30, redis_client=dead)
    backend = Backend()
    with caplog.at_level("WARNING", logger="services.resilience"):
        assert breaker.call(backend) == 1  # Redis down never breaks the call path
    assert any("Redis did not answer" in r.getMessage() for r in caplog.records)
    trip(breaker, backend)
    with pytest.raises(CircuitOpen):
        breaker.call(backend)
    assert breaker.state is CircuitState.OPEN
    dead.close()


def test_guarded_uses_the_configured_breaker(name: str) -> None:
    backend = Backend()
    assert guarded(name, backend) == 1
    breaker = get_breaker(name)
    assert breaker is get_breaker(name)
    assert breaker.failure_threshold == 5  # CIRCUIT_FAILURE_THRESHOLD default


def test_circuit_block_guards_a_with_statement(name: str) -> None:
    backend = Backend()
    backend.down = True
    for _ in range(5):  # CIRCUIT_FAILURE_THRESHOLD default
        with pytest.raises(BackendUnavailable), circuit(name):
            backend()
    with pytest.raises(CircuitOpen), circuit(name):
        backend()
    assert backend.calls == 5


def test_disabled_breakers_call_straight_through(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_ENABLED", "false")
    reload_settings()
    try:
        backend = Backend()
        backend.down = True
        for _ in range(8):
            with pytest.raises(BackendUnavailable):
                guarded(name, backend)
        with pytest.raises(BackendUnavailable), circuit(name):
            backend()
        assert backend.calls == 9
    finally:
        monkeypatch.delenv("CIRCUIT_BREAKER_ENABLED")
        reload_settings()


def test_another_breakers_refusal_is_no_failure_of_this_one(name: str) -> None:
    inner = CircuitBreaker(name + "-inner", failure_threshold=1, timeout=30)
    outer = CircuitBreaker(name + "-outer", failure_threshold=1, timeout=30)
    trip(inner, Backend())

    def nested() -> int:
        return inner.call(Backend())

    for _ in range(3):
        with pytest.raises(CircuitOpen):
            outer.call(nested)
    assert outer.state is CircuitState.CLOSED
