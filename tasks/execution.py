"""``workflow_execution``: execute a registered workflow, idempotent by execution id, and attach its
pipeline.

What follows an execution is composed here, on the worker, as a Celery canvas:
``chain(execute, group(index_execution, index_logs, update_workflow_stats))``. The producer sends a plain
``workflow_execution.execute`` message; the task, once the execution is recorded, adds the group to its
own chain (``request.chain``), and Celery sends the group with the execution record as its argument.
So every producer gets the whole pipeline: ``enqueue``, ``enqueue_many``, the HTTP API, a dead-letter
replay, a plain Celery ``send_task`` from a codebase that has none of ours, a Celery client in another
language. A message whose chain holds the follow-ups already (sent by an older producer that composed the
canvas itself) does not get them twice. Each follow-up is idempotent (upserts by id, counted once per
execution id), so a redelivered execution that sends them again changes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import group
from celery.utils.log import get_task_logger
from redis import Redis

from fabric.contracts import ExecuteWorkflow
from fabric.redis_clients import get_redis
from tasks.app import app
from tasks.base import BaseTask
from workflows.pipelines import cancel_key
from workflows.service import run_execution

logger = get_task_logger(__name__)

#: What follows an execution, run together on its record: index it, index its logs, count it.
EXECUTION_FOLLOW_UP = (
    "indexing_tasks.index_execution",
    "indexing_tasks.index_logs",
    "analytics_tasks.update_workflow_stats",
)


@app.task(name="workflow_execution.execute", bind=True)
def execute(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    """Run the workflow and store its execution record; returns the record (JSON).

    A redelivered message for a finished execution returns the recorded result and repeats no step.
    Cancellation (``cancel_execution``) is honoured between steps.
    """
    message = ExecuteWorkflow.model_validate(payload)
    execution_id = message.execution_id or self.request.id
    record, ran = run_execution(
        message.workflow_id,
        message.input_data,
        execution_id=execution_id,
        should_cancel=CancelCheck(get_redis(), execution_id),
    )
    logger.info(
        "execution %s of %s %s%s", execution_id, message.workflow_id, record.status.value,
        "" if ran else " (already finished: returned the recorded result)",
    )  # fmt: skip
    attach_follow_up(
        self, summary=f"(<execution {execution_id} of {message.workflow_id}: {record.status.value}>,)"
    )
    return record.model_dump(mode="json")


#: Seconds between two looks at an execution's cancel flag in Redis.
CANCEL_CHECK_INTERVAL = 0.25


class CancelCheck:
    """``should_cancel`` for the engine, which asks before every step: has ``cancel_execution`` flagged the
    execution? Redis is asked the first time and then at most every :data:`CANCEL_CHECK_INTERVAL` seconds:
    a run of fast steps costs one round trip, not one per step, and a cancellation is seen before the
    first step that starts a quarter of a second or more after it."""

    def __init__(
        self, client: Redis, execution_id: str, interval: float = CANCEL_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.client = client
        self.key = cancel_key(execution_id)
        self.interval = interval
        self.clock = clock
        self.asked = 0
        self._next = -math.inf

    def __call__(self) -> bool:
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        self.asked += 1
        return bool(self.client.exists(self.key))


def attach_follow_up(task: BaseTask, summary: str | None = None) -> None:
    """Add the follow-up group to the running task's chain, unless the chain holds it already.

    ``summary`` is what the follow-ups' messages and events show as their arguments (``argsrepr``: Flower's
    "args"), in place of Celery's ``repr`` of the whole execution record: shorter to read, and a fifth of
    the pool's CPU time for sending them went to building that ``repr`` three times (py-spy)."""
    chain = task.request.chain or []
    if any(name in EXECUTION_FOLLOW_UP for signature in chain for name in _task_names(signature)):
        return
    options = {} if summary is None else {"argsrepr": summary, "kwargsrepr": "{}"}
    # The chain runs from its end: the group goes next, before anything the producer chained after.
    task.request.chain = [
        *chain,
        group(task.app.signature(name, options=options) for name in EXECUTION_FOLLOW_UP),
    ]


def _task_names(signature: Any) -> Iterator[str]:
    """Every task name in a signature (as a dict or a Signature), groups and chains included."""
    if not isinstance(signature, Mapping):
        return
    name = signature.get("task")
    if isinstance(name, str):
        yield name
    inner = (signature.get("kwargs") or {}).get("tasks") or []
    for item in inner if isinstance(inner, list | tuple) else []:
        yield from _task_names(item)
