"""The noop tasks the fabric benchmark compares: lean Celery, bare Celery with our settings, and ours
through the base task.

- ``lean``: the baseline. What Celery's docs set up for reliable tasks (:func:`lean_configuration`), not a
  copy of ours: what our settings cost shows as the gap between ``lean`` and ``bare``.
- ``bare``: stock Celery configured exactly like ours (``celery_config.build``), no base task.
- ``noop``: ours, on ``tasks.app`` through :class:`~tasks.base.BaseTask`.

All three do the same work (one INCR, plus first/last timestamps) so the drain rate can be read from Redis.
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


def lean_configuration(redis_url: str) -> dict[str, Any]:
    """Lean Celery: what a user following Celery's docs for reliable tasks sets up, not a copy of ours.

    Broker and result backend on the same Redis, JSON only, acks late with prefetch 1 and a task whose
    worker died requeued, results stored (Celery's own Redis backend, ``task_ignore_result`` left False).
    Everything else is Celery's default: no task events (run its worker without ``-E``), no "sent" events,
    no STARTED state, no extended results, the Redis transport's default priority steps, the default queue.
    """
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_reject_on_worker_lost": True,
        # Said explicitly, as the defaults they are: the baseline sends no events and stores results.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_ignore_result": False,
        # Only silences Celery's deprecation warning at start-up; it costs nothing per task.
        "broker_connection_retry_on_startup": True,
    }


#: Lean Celery (``celery -A bench.fabric_tasks:lean worker``, without ``-E``), on the settings' Redis.
lean = Celery("lean", set_as_current=False)
lean.conf.update(lean_configuration(get_settings().redis_url))

#: Stock Celery configured exactly like ours.
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


@lean.task(name="bench.lean_noop")
def lean_noop() -> None:
    _count()


@bare.task(name="bench.bare_noop")
def bare_noop() -> None:
    _count()


@app.task(name="bench.noop", base=BaseTask, bind=True)
def noop(self: BaseTask, payload: dict[str, Any]) -> None:
    _count()
