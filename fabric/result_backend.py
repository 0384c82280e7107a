"""Celery's Redis result backend, as workers and producers use it.

:class:`RedisResultBackend` (workers) stores what Celery's own does, with one exception: a task that sets
``result_keeps_arguments = False`` (the bulk envelope consumers) is stored without its ``args`` and
``kwargs``. With ``result_extended`` on, Celery copies every task's arguments into its result, once for
STARTED and once for SUCCESS, and reads the STARTED copy back before writing SUCCESS: for an envelope of 500
documents that is three JSON passes over the whole envelope and a second copy of it kept in Redis for as
long as results are kept, for data whose every item has a status of its own
(:mod:`fabric.statuses`) and is already written where it belongs.

:class:`ProducerRedisBackend` (producers) does not subscribe to results it will never wait for. Other
result backends (``RESULT_BACKEND`` not Redis) are Celery's own, unchanged.
"""

from __future__ import annotations

from typing import Any

from celery.app.task import Context
from celery.backends.redis import RedisBackend

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def backend_url(url: str, backend: type[RedisBackend]) -> str:
    """``url`` with ``backend`` as the class Celery builds for it (only for Redis URLs)."""
    if url.startswith(REDIS_SCHEMES):
        return f"{backend.__module__}:{backend.__qualname__}+{url}"
    return url


class RedisResultBackend(RedisBackend):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's Redis backend, leaving out the arguments of tasks that ask for it."""

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        if request is not None:
            task = self.app.tasks.get(getattr(request, "task", None) or "")
            if task is not None and not getattr(task, "result_keeps_arguments", True):
                request = Context(vars(request), args=None, kwargs=None)
        return super().store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)


class ProducerRedisBackend(RedisResultBackend):
    """The Redis result backend as producers use it.

    Celery's Redis backend subscribes to a pub/sub channel for every task a process sends, so that a later
    ``AsyncResult.get()`` wakes up at once. Our producers never block on results (they read statuses with
    ``get_status``), so the subscription would only cost a round trip per message and a connection that
    stays open.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def on_result_fulfilled(self, result: Any) -> None:
        # Nothing was subscribed, so there is nothing to unsubscribe (Celery would open a pub/sub
        # connection just to do it when an AsyncResult is garbage-collected).
        return None
