"""The guide's resilience helpers: a :class:`CircuitBreaker` shared by every process through Redis, and
:func:`retry_with_backoff`.

Library choice
--------------
- ``retry_with_backoff`` runs on **tenacity** (already a dependency, used by the OpenAI adapter): its
  ``Retrying``/``AsyncRetrying`` give exponential waits, a cap, jitter and exception filters for sync and
  async callables, so no hand-written loop is needed.
- The breaker is written here, on Redis primitives, after evaluating **pybreaker** (1.x) and its
  ``CircuitRedisStorage``. pybreaker does not fit a prefork fleet: its failure counter is a plain ``INCR``
  with no time window (old failures never age out), the OPEN -> HALF_OPEN move is a read-then-write done by
  whichever process looks first (so every process that sees the timeout pass sends its own "probe"), there is
  no expiry on the OPEN state (each process computes it from a stored timestamp and its own clock), and its
  async support is Tornado-only. What we need is small: a windowed failure count, an OPEN key that expires by
  itself after ``timeout``, and a ``SET NX`` lock so exactly one probe goes through half-open; each
  transition is one Lua script, so it is atomic across processes.

State in Redis (prefix ``wft:breaker:<name>:``)
-----------------------------------------------
- ``failures``: sorted set of failure times; entries older than ``window`` seconds are dropped. When it
  reaches ``failure_threshold`` the breaker opens.
- ``open``: exists while OPEN; its TTL is ``timeout``, so the fleet moves to half-open together.
- ``tripped``: exists from opening until a probe succeeds; ``tripped`` without ``open`` is HALF_OPEN.
- ``probe``: the half-open lock (``SET NX PX``); its holder makes the one trial call. Success deletes all
  keys (CLOSED); failure sets ``open`` again.

Only :class:`~fabric.errors.TransientError` (a backend down, a timeout, 5xx/429: what the adapters raise as
``BackendUnavailable``) counts as a failure; a permanent error means the backend answered. While open, calls
fail fast with :class:`CircuitOpen`, itself a ``BackendUnavailable``, so a Celery task retries with backoff.

If Redis itself does not answer, the breaker never breaks the call path: it logs once and falls back to a
state local to the process (same rules, in memory) until Redis answers again.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ParamSpec, TypeVar, cast

import redis
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from config import get_settings
from fabric import keys
from fabric.errors import BackendUnavailable, TransientError
from fabric.redis_clients import LuaScript, get_redis
from fabric.registry import PerProcess

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

KEY_PREFIX = keys.BREAKER
#: After Redis failed, how long a breaker keeps to its local state before asking Redis again (seconds).
REDIS_RETRY_AFTER = 5.0


class CircuitState(Enum):
    """The guide's three states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(BackendUnavailable):
    """A call refused without being made: the backend's breaker is open (or half-open with a probe out)."""

    def __init__(self, name: str, retry_after: float | None) -> None:
        self.name = name
        self.retry_after = retry_after
        hint = f"; next probe in {retry_after:.1f}s" if retry_after is not None else "; a probe is running"
        super().__init__(f"circuit breaker '{name}' is open: backend calls fail fast{hint}")

    def __reduce__(self) -> tuple[type[CircuitOpen], tuple[str, float | None]]:
        # Celery pickles exceptions to check them; without this it would fall back to the base class.
        return (CircuitOpen, (self.name, self.retry_after))


# --- Redis scripts: each transition is atomic across processes -----------------------------------------

# KEYS: open, tripped, probe, failures. ARGV: probe_ms.
# Returns {decision, ms}: decision 0 = closed (ms = failures counted), 1 = open (ms = pttl of open),
# 2 = half-open, this caller holds the probe, 3 = half-open, another caller holds the probe.
_ACQUIRE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 or ttl == -1 then return {1, ttl} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return {2, 0} end
  return {3, redis.call('PTTL', KEYS[3])}
end
return {0, redis.call('ZCARD', KEYS[4])}
"""

# KEYS: open, tripped, probe, failures. ARGV: now_ms, window_ms, threshold, timeout_ms, tripped_ms, member,
# was_probe. Returns 1 if this failure opened the breaker, 0 otherwise.
_FAILURE = """
if ARGV[7] == '1' or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  redis.call('DEL', KEYS[3], KEYS[4])
  return ARGV[7] == '1' and 1 or 0
end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[4], now, ARGV[6])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
"""
_SCRIPTS = {_ACQUIRE: LuaScript(_ACQUIRE), _FAILURE: LuaScript(_FAILURE)}


@dataclass(frozen=True)
class _Ticket:
    """What :meth:`CircuitBreaker._before_call` learned: is this the probe, were failures counted."""

    probe: bool
    saw_failures: bool


@dataclass
class _LocalState:
    """The breaker's state inside one process, used while Redis does not answer."""

    failures: list[float] = field(default_factory=list)
    opened_until: float = 0.0
    tripped: bool = False
    probing: bool = False


class CircuitBreaker:
    """The guide's ``CircuitBreaker(failure_threshold=5, timeout=60)``, named and shared through Redis.

    ``name`` identifies the guarded backend (e.g. ``"elasticsearch"``): every process using the same name
    shares one state. ``failure_threshold`` failures within ``window`` seconds (default: ``timeout``) open
    it; after ``timeout`` seconds one probe call is let through; its success closes the breaker.
    ``failure_on`` are the exception types that count as the backend failing.
    ``redis_client`` defaults to :func:`fabric.redis_clients.get_redis` (looked up per call, so a forked
    child uses its own connection).
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        timeout: float = 60,
        *,
        window: float | None = None,
        failure_on: tuple[type[BaseException], ...] = (TransientError,),
        redis_client: redis.Redis | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.timeout = float(timeout)
        self.window = float(window if window is not None else timeout)
        self.failure_on = failure_on
        self._redis = redis_client
        self._local = _LocalState()
        self._lock = threading.Lock()
        self._redis_down_until = 0.0
        prefix = f"{KEY_PREFIX}{name}:"
        self.keys = [prefix + "open", prefix + "tripped", prefix + "probe", prefix + "failures"]

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.name!r}, failure_threshold={self.failure_threshold}, "
            f"timeout={self.timeout})"
        )

    # --- public API ----------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state as the fleet sees it (the local one while Redis is down)."""
        client = self._client()
        if client is not None:
            try:
                open_key, tripped_key = self.keys[0], self.keys[1]
                with client.pipeline(transaction=False) as pipe:
                    pipe.exists(open_key)
                    pipe.exists(tripped_key)
                    is_open, is_tripped = pipe.execute()
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                if is_open:
                    return CircuitState.OPEN
                return CircuitState.HALF_OPEN if is_tripped else CircuitState.CLOSED
        with self._lock:
            if self._local.opened_until > time.monotonic():
                return CircuitState.OPEN
            return CircuitState.HALF_OPEN if self._local.tripped else CircuitState.CLOSED

    @property
    def failure_count(self) -> int:
        """Failures counted in the current window (all processes)."""
        client = self._client()
        if client is not None:
            try:
                now = time.time()
                client.zremrangebyscore(self.keys[3], "-inf", (now - self.window) * 1000)
                return int(client.zcard(self.keys[3]))
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            return len(self._prune_local(time.monotonic()))

    def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func(*args, **kwargs)`` through the breaker and return its result.

        For a coroutine function this returns the coroutine of :meth:`acall` (await it), so the guide's
        ``await breaker.call(async_func, ...)`` works. Raises :class:`CircuitOpen` without calling ``func``
        while the breaker is open, and whatever ``func`` raises otherwise.
        """
        if inspect.iscoroutinefunction(func):
            return cast(T, self.acall(func, *args, **kwargs))
        ticket = self._before_call()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._after_call(ticket, exc)
            raise
        if inspect.isawaitable(result):
            # A plain function handed back an awaitable (e.g. a lambda around an async call): the outcome is
            # known only once it is awaited, so judge it then.
            return cast(T, self._finish_awaitable(ticket, result))
        self._after_call(ticket, None)
        return result

    async def acall(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``func(*args, **kwargs)`` through the breaker. Raises :class:`CircuitOpen` or what it raises.

        The Redis round trips are synchronous (sub-millisecond on a local Redis); they do not yield.
        """
        ticket = self._before_call()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self._after_call(ticket, exc)
            raise
        self._after_call(ticket, None)
        return result

    def __call__(self, func: Callable[P, T]) -> Callable[P, T]:
        """Use the breaker as a decorator of a plain or async function."""
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(async_func, *args, **kwargs)

            return cast(Callable[P, T], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(func, *args, **kwargs)

        return wrapper

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """The breaker around a ``with`` block: raises :class:`CircuitOpen` on entry while open, and judges
        the block's outcome like :meth:`call` does (a transient error raised from it counts as a failure)."""
        ticket = self._before_call()
        try:
            yield
        except BaseException as exc:
            self._after_call(ticket, exc)
            raise
        self._after_call(ticket, None)

    def reset(self) -> None:
        """Close the breaker and forget its failures, in Redis and locally (tests, operators)."""
        with self._lock:
            self._local = _LocalState()
        client = self._client()
        if client is not None:
            try:
                client.delete(*self.keys)
            except redis.RedisError as exc:
                self._redis_failed(exc)

    # --- transitions ---------------------------------------------------------------------------------

    async def _finish_awaitable(self, ticket: _Ticket, awaitable: Awaitable[T]) -> T:
        try:
            result = await awaitable
        except BaseException as exc:
            self._after_call(ticket, exc)
            raise
        self._after_call(ticket, None)
        return result

    def _before_call(self) -> _Ticket:
        """Decide whether the call may go ahead (else raise CircuitOpen); say how to judge its outcome."""
        client = self._client()
        if client is not None:
            try:
                decision, value = self._script(client, _ACQUIRE, [self._probe_ms()])
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                if decision == 1:
                    raise CircuitOpen(self.name, value / 1000 if value > 0 else None)
                if decision == 3:
                    raise CircuitOpen(self.name, None)
                return _Ticket(probe=decision == 2, saw_failures=decision == 0 and value > 0)
        return _Ticket(probe=self._local_before_call(), saw_failures=False)

    def _after_call(self, ticket: _Ticket, exc: BaseException | None) -> None:
        probe = ticket.probe
        if isinstance(exc, CircuitOpen) or (exc is not None and not isinstance(exc, Exception)):
            # No verdict on this backend: another backend's breaker refused a call nested in this one (a
            # vector store calling its embedder), or the call was cancelled/interrupted. Free the probe lock.
            self._release_probe(probe)
            return
        failed = exc is not None and isinstance(exc, self.failure_on)
        client = self._client()
        if client is not None:
            try:
                if failed:
                    self._record_failure(client, probe, exc)
                else:
                    self._record_success(client, probe, ticket.saw_failures)
                return
            except redis.RedisError as err:
                self._redis_failed(err)
        self._local_after_call(probe, failed)

    def _record_failure(self, client: redis.Redis, probe: bool, exc: BaseException | None) -> None:
        now_ms = int(time.time() * 1000)
        member = f"{now_ms}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        opened = self._script(
            client,
            _FAILURE,
            [now_ms, int(self.window * 1000), self.failure_threshold, int(self.timeout * 1000),
             self._tripped_ms(), member, 1 if probe else 0],
        )  # fmt: skip
        if opened:
            what = "the half-open probe failed" if probe else f"{self.failure_threshold} failures"
            logger.warning(
                "circuit breaker '%s' opened for %.0fs: %s (last: %s)", self.name, self.timeout, what, exc
            )

    def _record_success(self, client: redis.Redis, probe: bool, saw_failures: bool) -> None:
        if probe:
            client.delete(*self.keys)
            logger.info("circuit breaker '%s' closed: the probe call succeeded", self.name)
        elif saw_failures:
            # The guide resets the count on success: failures must come close together to open the breaker.
            client.delete(self.keys[3])

    def _release_probe(self, probe: bool) -> None:
        if not probe:
            return
        client = self._client()
        if client is not None:
            try:
                client.delete(self.keys[2])
                return
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            self._local.probing = False

    def _script(self, client: redis.Redis, script: str, args: list[Any]) -> Any:
        result = _SCRIPTS[script](client, keys=self.keys, args=args)
        if script is _ACQUIRE:
            return int(result[0]), int(result[1])
        return int(result)

    def _probe_ms(self) -> int:
        # The probe lock outlives one call at most by this; a probe that hangs longer lets another through.
        return int(max(self.timeout, 1.0) * 1000)

    def _tripped_ms(self) -> int:
        # Long enough to remember an unprobed outage; short enough that a forgotten breaker closes itself.
        return int(max(self.timeout * 20, 3600) * 1000)

    # --- Redis unavailable: local state --------------------------------------------------------------

    def _client(self) -> redis.Redis | None:
        if time.monotonic() < self._redis_down_until:
            return None
        return self._redis if self._redis is not None else get_redis()

    def _redis_failed(self, exc: BaseException) -> None:
        first = self._redis_down_until == 0.0 or time.monotonic() >= self._redis_down_until + 60
        self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER
        if first:
            logger.warning(
                "circuit breaker '%s': Redis did not answer (%s); using this process's own state for %.0fs",
                self.name,
                exc,
                REDIS_RETRY_AFTER,
            )

    def _prune_local(self, now: float) -> list[float]:
        self._local.failures = [t for t in self._local.failures if t > now - self.window]
        return self._local.failures

    def _local_before_call(self) -> bool:
        now = time.monotonic()
        with self._lock:
            state = self._local
            if state.opened_until > now:
                raise CircuitOpen(self.name, state.opened_until - now)
            if state.tripped:
                if state.probing:
                    raise CircuitOpen(self.name, None)
                state.probing = True
                return True
            return False

    def _local_after_call(self, probe: bool, failed: bool) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._local
            if not failed:
                if probe or not state.tripped:
                    self._local = _LocalState()
                return
            if probe or state.tripped:
                state.opened_until = now + self.timeout
                state.tripped = True
                state.probing = False
                return
            self._prune_local(now).append(now)
            if len(state.failures) >= self.failure_threshold:
                state.opened_until = now + self.timeout
                state.tripped = True
                state.failures = []
                logger.warning("circuit breaker '%s' opened (local state) for %.0fs", self.name, self.timeout)


# --- one breaker per backend and process -----------------------------------------------------------------


def _make_breaker(name: str) -> CircuitBreaker:
    settings = get_settings()
    return CircuitBreaker(
        name,
        failure_threshold=settings.circuit_failure_threshold,
        timeout=settings.circuit_timeout,
        window=settings.circuit_window,
    )


_breakers: PerProcess[CircuitBreaker] = PerProcess("circuit breakers", _make_breaker, close=lambda b: None)


def get_breaker(name: str) -> CircuitBreaker:
    """The breaker guarding backend ``name`` in this process, configured from the settings
    (``CIRCUIT_FAILURE_THRESHOLD``, ``CIRCUIT_TIMEOUT``, ``CIRCUIT_WINDOW``)."""
    return _breakers.get(name)


def reset_breakers() -> None:
    """Forget this process's breakers (tests that change the settings). Redis state is left alone."""
    _breakers.reset()


def guarded(name: str, func: Callable[[], T]) -> T:
    """Call ``func()`` through the breaker of backend ``name`` (directly when ``CIRCUIT_BREAKER_ENABLED`` is
    false) and return its result. What the adapters use around their network calls.

    Raises :class:`CircuitOpen` while the breaker is open, or what ``func`` raises."""
    if not get_settings().circuit_breaker_enabled:
        return func()
    return get_breaker(name).call(func)


@contextlib.contextmanager
def circuit(name: str) -> Iterator[None]:
    """:func:`guarded` as a ``with`` block: ``with circuit("weaviate@host:8080"): ...``.

    Raises :class:`CircuitOpen` on entry while the breaker is open; the block's exceptions pass through."""
    if not get_settings().circuit_breaker_enabled:
        yield
        return
    with get_breaker(name).guard():
        yield


# --- retry_with_backoff ----------------------------------------------------------------------------------


def _wait(
    base_delay: float, max_delay: float, backoff_factor: float, jitter: bool
) -> Callable[[RetryCallState], float]:
    """The guide's delay: ``min(base * factor**attempt, max)``, times 0.5-1.0 with jitter."""

    def wait(state: RetryCallState) -> float:
        attempt = state.attempt_number - 1
        delay = min(base_delay * backoff_factor**attempt, max_delay)
        if jitter:
            delay *= 0.5 + random.random() * 0.5
        return float(delay)

    return wait


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, delay)


def retry_with_backoff(
    func: Callable[[], T],
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    retry_on: tuple[type[BaseException], ...] = (TransientError,),
) -> T:
    """The guide's ``retry_with_backoff``: call ``func()`` up to ``max_retries + 1`` times, pausing
    ``min(base_delay * backoff_factor**n, max_delay)`` (times 0.5-1.0 with ``jitter``) after the n-th failure.

    Only exceptions in ``retry_on`` are retried (by default transient ones: a :class:`CircuitOpen` too); any
    other is raised at once; after the last attempt its exception is raised as is. Returns ``func()``'s
    result. For a coroutine function, or a function that returns an awaitable (the guide's
    ``lambda: storage.upload_file(...)`` around an async call), it returns a coroutine to await, which
    retries asynchronously (``asyncio.sleep``, never blocking the loop).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
    options: dict[str, Any] = {
        "stop": stop_after_attempt(max_retries + 1),
        "wait": _wait(base_delay, max_delay, backoff_factor, jitter),
        "retry": retry_if_exception_type(retry_on),
        "before_sleep": _log_retry,
        "reraise": True,
    }
    if inspect.iscoroutinefunction(func):
        return cast(T, _aretry(cast(Callable[[], Awaitable[Any]], func), options, None))
    for attempt in Retrying(**options):
        with attempt:
            result = func()
            if inspect.isawaitable(result):
                # Only now do we know the call is asynchronous: carry on retrying in the event loop, the
                # awaitable in hand being the first attempt.
                return cast(T, _aretry(cast(Callable[[], Awaitable[Any]], func), options, result))
            return result
    raise AssertionError("tenacity stops by raising")  # pragma: no cover - reraise=True always raises


async def _aretry(
    func: Callable[[], Awaitable[Any]], options: dict[str, Any], first: Awaitable[Any] | None
) -> Any:
    pending = first
    async for attempt in AsyncRetrying(**options):
        with attempt:
            awaitable, pending = (pending, None) if pending is not None else (func(), None)
            return await awaitable
    raise AssertionError("tenacity stops by raising")  # pragma: no cover


def aretry_with_backoff(
    func: Callable[[], Awaitable[T]],
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    retry_on: tuple[type[BaseException], ...] = (TransientError,),
) -> Coroutine[Any, Any, T]:
    """:func:`retry_with_backoff` for a callable returning an awaitable, typed as a coroutine to await."""
    return cast(
        Coroutine[Any, Any, T],
        retry_with_backoff(
            cast(Callable[[], T], func), max_retries, base_delay, max_delay, backoff_factor, jitter, retry_on
        ),
    )
