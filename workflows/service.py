"""One execution, start to finish, against the object store: what the ``workflow_execution`` task calls.

Idempotent by execution id: a finished record already stored for that id is returned as it is and no step
runs again, so a redelivered message (a worker killed with ``kill -9`` after the record was written) repeats
nothing. A record left ``running`` by a killed worker is not finished, so the redelivery runs the execution
again from the start and overwrites it: one record per id, ending completed, failed or cancelled.

The running record is stored once an execution has run :data:`RUNNING_RECORD_AFTER` seconds (while its
steps go on), not before every execution: most executions end within milliseconds, and their running record
would be replaced before anybody could read it, at the cost of a file write (half of what storing an
execution costs). A worker killed before that leaves no record; the redelivery runs the execution, as it
does for a record left running.

Each finished execution is counted in the fleet's metrics (:func:`services.metrics.record_execution`) once
per id: counted here whenever a finished record is returned, ran now or found stored, and the metrics
keep a marker per id, so a redelivery counts nothing twice while a worker killed between storing the record
and counting it is made good by the redelivery.
"""

from __future__ import annotations

import logging
from typing import Any

from fabric.errors import InvalidInput
from services import metrics
from workflows.engine import OnStep, ShouldCancel, WorkflowEngine, get_engine
from workflows.model import ExecutionRecord, StepStatus
from workflows.repository import WorkflowRepository

logger = logging.getLogger(__name__)

#: Seconds an execution runs before its ``running`` record is stored (the STARTED state's grace, too).
RUNNING_RECORD_AFTER = 0.05


def run_execution(
    workflow_id: str,
    input_data: dict[str, Any] | None,
    *,
    execution_id: str,
    repository: WorkflowRepository | None = None,
    engine: WorkflowEngine | None = None,
    should_cancel: ShouldCancel | None = None,
    on_step: OnStep | None = None,
    record_running: float | None = RUNNING_RECORD_AFTER,
) -> tuple[ExecutionRecord, bool]:
    """Run workflow ``workflow_id`` on ``input_data`` as execution ``execution_id`` and store the record.

    Returns ``(record, ran)``: ``ran`` is False when a finished record was already stored (nothing ran).
    ``record_running``: seconds after which a ``running`` record is stored, so a longer execution is
    visible while it runs (0: before its first step; None: never).
    Raises NotFound for an unknown workflow, InvalidInput when ``execution_id`` already belongs to another
    workflow or the input is not a JSON object; storage errors propagate (BackendUnavailable is transient).
    A failing step does not raise: the stored record says failed.
    """
    repo = repository or WorkflowRepository()
    existing = repo.get_execution(execution_id)
    if existing is not None:
        if existing.workflow_id != workflow_id:
            raise InvalidInput(
                f"execution {execution_id!r} belongs to workflow {existing.workflow_id!r}, "
                f"not {workflow_id!r}"
            )
        if existing.status.finished:
            count_execution(existing)
            return existing, False
    workflow = repo.get_workflow(workflow_id)
    run_engine = engine or get_engine()
    plan = run_engine.plan(workflow)
    if input_data is None:
        input_data = {}
    if not isinstance(input_data, dict):
        raise InvalidInput(f"input_data must be a JSON object, got {type(input_data).__name__}")

    def store_running(running: ExecutionRecord) -> None:
        # Called by the engine, in its thread, once the execution has run ``record_running`` seconds. A
        # running record that cannot be stored does not stop the execution: its final record is stored.
        try:
            repo.save_execution(running)
        except Exception as exc:
            logger.warning("could not store the running record of %s: %s", execution_id, exc)

    record = run_engine.run(
        plan,
        input_data,
        execution_id=execution_id,
        should_cancel=should_cancel,
        on_step=on_step,
        running_for=None if record_running is None else (record_running, store_running),
    )
    repo.save_execution(record)
    count_execution(record)
    return record, True


def count_execution(record: ExecutionRecord) -> bool:
    """Count the finished ``record`` in the fleet's metrics: its status, duration and the duration of each
    step that ran (completed or failed). Returns True if counted now, False if it was counted before (or
    finished too long ago, or Redis failed: metrics never fail an execution)."""
    duration = record.duration_ms
    steps = [
        (step.type, step.duration_ms / 1000.0)
        for step in record.steps
        if step.duration_ms is not None and step.status in (StepStatus.COMPLETED, StepStatus.FAILED)
    ]
    return metrics.record_execution(
        record.execution_id,
        record.workflow_id,
        record.status.value,
        duration / 1000.0 if duration is not None else None,
        steps,
        finished_at=record.completed_at.timestamp() if record.completed_at else None,
    )
