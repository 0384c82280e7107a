"""The bare-Celery side of the pipeline benchmark: noop tasks shaped like the execution pipeline
(``chain(noop, group(noop, noop, noop))``), configured like ours, counting finished leaves in Redis."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from config import get_settings
from fabric import celery_config
from fabric.redis_clients import get_redis

DONE = "bench:pipeline:bare:done"
FIRST = "bench:pipeline:bare:first"
LAST = "bench:pipeline:bare:last"

bare = Celery("bare-pipeline", set_as_current=False)
bare.conf.update(celery_config.build(get_settings()))


@bare.task(name="bench.pipeline_head")
def head(*args: Any, **kwargs: Any) -> dict[str, int]:
    client = get_redis()
    client.setnx(FIRST, time.time())
    return {"ok": 1}


@bare.task(name="bench.pipeline_leaf")
def leaf(*args: Any, **kwargs: Any) -> None:
    client = get_redis()
    client.incr(DONE)
    client.set(LAST, time.time())
