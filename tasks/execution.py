"""``workflow_execution``: execute a registered workflow, idempotent by execution id, and attach its
pipeline.

What follows an execution is composed here, on the worker, as a Celery canvas:
``chain(execute, index_and_count_execution)``. The producer sends a plain ``workflow_execution.execute``
message; the task, once the execution is recorded, adds the follow-up to its own chain (``request.chain``),
and Celery sends it with the execution record as its argument. One follow-up message does what three did
(``index_execution``, ``index_logs``, ``update_workflow_stats``, which stay for producers that send them):
an execution costs two broker messages, each with its own state in Flower.
So every producer gets the whole pipeline: ``enqueue``, ``enqueue_many``, the HTTP API, a dead-letter
replay, a plain Celery ``send_task`` from a codebase that has none of ours, a Celery client in another
language. A message whose chain holds a follow-up already (sent by an older producer that composed the
canvas itself, with the follow-ups of that time) does not get one again. The follow-up is idempotent
(upserts by id, counted once per execution id), so a redelivered execution that sends it again changes
nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery.utils.log import get_task_logger
from redis import Redis

from fabric.contracts import ExecuteWorkflow
from fabric.redis_clients import get_redis
from tasks.app import app
from tasks.base import BaseTask
from workflows.pipelines import cancel_key
from workflows.service import run_execution

logger = get_task_logger(__name__)

#: What follows an execution, on its record: count it, index it, index its logs.
EXECUTION_FOLLOW_UP = "indexing_tasks.index_and_count_execution"
#: The follow-ups that producers of earlier versions chained after ``execute`` themselves, as a group.
EARLIER_FOLLOW_UPS = (
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
    """Add the follow-up to the running task's chain, unless the chain holds one already.

    ``summary`` is what the follow-up's message and events show as its arguments (``argsrepr``: Flower's
    "args"), in place of Celery's ``repr`` of the whole execution record: shorter to read, and a fifth of
    the pool's CPU time for sending follow-ups went to building that ``repr`` (py-spy)."""
    chain = task.request.chain or []
    known = (EXECUTION_FOLLOW_UP, *EARLIER_FOLLOW_UPS)
    if any(name in known for signature in chain for name in _task_names(signature)):
        return
    options = {} if summary is None else {"argsrepr": summary, "kwargsrepr": "{}"}
    # The chain runs from its end: the follow-up goes next, before anything the producer chained after.
    task.request.chain = [*chain, task.app.signature(EXECUTION_FOLLOW_UP, options=options)]


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
