"""The two noop tasks the fabric benchmark compares: bare Celery, and ours through the base task.

Both do the same work (one INCR, plus first/last timestamps) so the drain rate can be read from Redis.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from celery import Celery

from config import get_settings
from fabric import celery_config
from fabric.contracts import Payload, register_action
from fabric.redis_clients import get_redis
from tasks.app import app
from tasks.base import BaseTask

DONE = "bench:fabric:done"
FIRST = "bench:fabric:first"
LAST = "bench:fabric:last"
TARGET = "bench:fabric:target"

bare = Celery("bare", set_as_current=False)
bare.conf.update(celery_config.build(get_settings()))


class Noop(Payload):
    action: Literal["bench_noop"]


register_action("analytics_tasks", "bench_noop", Noop, task="bench.noop")


def _count() -> None:
    client = get_redis()
    done = int(client.incr(DONE))
    now = time.time()
    if done == 1:
        client.set(FIRST, now)
    if done == int(client.get(TARGET) or 0):
        client.set(LAST, now)


@bare.task(name="bench.bare_noop")
def bare_noop() -> None:
    _count()


@app.task(name="bench.noop", base=BaseTask, bind=True)
def noop(self: BaseTask, payload: dict[str, Any]) -> None:
    _count()
