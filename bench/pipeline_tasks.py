"""The bare-Celery sides of the pipeline benchmark: noop tasks shaped like the execution pipeline
(``chain(noop, group(noop, noop, noop))``), counting finished leaves in Redis, on two apps:

- ``lean``: stock Celery as its docs set it up for reliable tasks
  (:func:`bench.fabric_tasks.lean_configuration`, the fabric benchmark's baseline; workers without ``-E``);
- ``bare``: stock Celery configured like ours (``celery_config.build``).

Both register the same two tasks by the same names, so the canvas is the same on either.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from bench.fabric_tasks import lean_configuration
from config import get_settings
from fabric import celery_config
from fabric.redis_clients import get_redis

DONE = "bench:pipeline:bare:done"
FIRST = "bench:pipeline:bare:first"
LAST = "bench:pipeline:bare:last"

HEAD = "bench.pipeline_head"
LEAF = "bench.pipeline_leaf"

bare = Celery("bare-pipeline", set_as_current=False)
bare.conf.update(celery_config.build(get_settings()))

lean = Celery("lean-pipeline", set_as_current=False)
lean.conf.update(lean_configuration(get_settings().redis_url))


def _head(*args: Any, **kwargs: Any) -> dict[str, int]:
    client = get_redis()
    client.setnx(FIRST, time.time())
    return {"ok": 1}


def _leaf(*args: Any, **kwargs: Any) -> None:
    client = get_redis()
    client.incr(DONE)
    client.set(LAST, time.time())


head = bare.task(name=HEAD)(_head)
leaf = bare.task(name=LEAF)(_leaf)
lean_head = lean.task(name=HEAD)(_head)
lean_leaf = lean.task(name=LEAF)(_leaf)
