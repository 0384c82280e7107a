"""retry_with_backoff (on tenacity) for plain and async callables."""

from __future__ import annotations

import asyncio

import pytest

from fabric.errors import BackendUnavailable, InvalidInput
from services.resilience import aretry_with_backoff, retry_with_backoff


class Flaky:
    def __init__(self, failures: int, exc: type[Exception] = BackendUnavailable) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return "ok"


def test_retries_transient_errors_until_success() -> None:
    flaky = Flaky(2)
    assert retry_with_backoff(flaky, max_retries=3, base_delay=0.001) == "ok"
    assert flaky.calls == 3


def test_gives_up_after_max_retries_with_the_last_error() -> None:
    flaky = Flaky(10)
    with pytest.raises(BackendUnavailable, match="failure 3"):
        retry_with_backoff(flaky, max_retries=2, base_delay=0.001)
    assert flaky.calls == 3


def test_permanent_errors_are_not_retried() -> None:
    flaky = Flaky(1, InvalidInput)
    with pytest.raises(InvalidInput):
        retry_with_backoff(flaky, base_delay=0.001)
    assert flaky.calls == 1


def test_retry_on_is_configurable() -> None:
    flaky = Flaky(1, KeyError)
    assert retry_with_backoff(flaky, base_delay=0.001, retry_on=(KeyError,)) == "ok"


def test_delays_follow_the_guide(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    with pytest.raises(BackendUnavailable):
        retry_with_backoff(
            Flaky(10), max_retries=4, base_delay=1, max_delay=5, backoff_factor=3, jitter=False
        )
    assert slept == [1, 3, 5, 5]
    slept.clear()
    with pytest.raises(BackendUnavailable):
        retry_with_backoff(Flaky(10), max_retries=3, base_delay=2, backoff_factor=2, jitter=True)
    for delay, full in zip(slept, [2, 4, 8], strict=True):
        assert full * 0.5 <= delay <= full


def test_async_callables() -> None:
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise BackendUnavailable("not yet")
        return "done"

    assert asyncio.run(retry_with_backoff(fetch, base_delay=0.001)) == "done"  # type: ignore[arg-type]
    assert calls == 3
    calls = 0
    # The guide's form: a plain lambda around an async call, awaited.
    guide_form = lambda: fetch()  # noqa: E731, PLW0108 - the guide passes a lambda
    assert asyncio.run(aretry_with_backoff(guide_form, base_delay=0.001)) == "done"
    assert calls == 3
