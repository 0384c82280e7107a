"""The execution task's cancel check against the session's Redis: one round trip for a run of fast steps,
and a cancellation seen at the first step that starts a check interval after it. Time is the test's own
clock, so a slow machine changes nothing."""

from __future__ import annotations

import redis

from tasks.execution import CancelCheck
from workflows.pipelines import cancel_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fast_steps_ask_redis_once_and_a_cancellation_is_seen_after_an_interval(
    redis_client: redis.Redis,
) -> None:
    clock = Clock()
    check = CancelCheck(redis_client, "ex-1", interval=0.5, clock=clock)
    for _ in range(3):
        assert check() is False
        clock.now += 0.125  # three fast steps (binary fractions: the sums are exact)
    assert check.asked == 1
    redis_client.set(cancel_key("ex-1"), 1)
    assert check() is False  # 0.375 s after the first look: not asked yet
    assert check.asked == 1
    clock.now += 0.125
    assert check() is True  # 0.5 s after it
    assert check.asked == 2


def test_a_cancellation_before_the_first_step_is_seen_at_once(redis_client: redis.Redis) -> None:
    redis_client.set(cancel_key("ex-2"), 1)
    check = CancelCheck(redis_client, "ex-2", clock=Clock())
    assert check() is True
    assert check.asked == 1
