"""The execution task's cancel check against the session's Redis: one round trip for a run of fast steps,
and a cancellation seen at the first step that starts a check interval after it."""

from __future__ import annotations

import time

import redis

from tasks.execution import CancelCheck
from workflows.pipelines import cancel_key


def test_fast_steps_ask_redis_once_and_a_cancellation_is_seen_after_an_interval(
    redis_client: redis.Redis,
) -> None:
    check = CancelCheck(redis_client, "ex-1", interval=0.2)
    assert [check() for _ in range(5)] == [False] * 5
    assert check.asked == 1
    redis_client.set(cancel_key("ex-1"), 1)
    assert check() is False  # within the interval: not asked yet
    time.sleep(0.25)
    assert check() is True
    assert check.asked == 2


def test_a_cancellation_before_the_first_step_is_seen_at_once(redis_client: redis.Redis) -> None:
    redis_client.set(cancel_key("ex-2"), 1)
    assert CancelCheck(redis_client, "ex-2")() is True
