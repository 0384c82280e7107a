"""One execution, start to finish, against the object store: what the ``workflow_execution`` task calls.

Idempotent by execution id: a finished record already stored for that id is returned as it is and no step
runs again, so a redelivered message (a worker killed with ``kill -9`` after the record was written) repeats
nothing. A record left ``running`` by a killed worker is not finished, so the redelivery runs the execution
again from the start and overwrites it: one record per id, ending completed, failed or cancelled.

Each finished execution is counted in the fleet's metrics (:func:`services.metrics.record_execution`) once
per id: counted here whenever a finished record is returned, ran now or found stored, and the metrics
keep a marker per id, so a redelivery counts nothing twice while a worker killed between storing the record
and counting it is made good by the redelivery.
"""

from __future__ import annotations

from typing import Any

from fabric.errors import InvalidInput
from services import metrics
from workflows.engine import OnStep, ShouldCancel, WorkflowEngine, get_engine
from workflows.model import ExecutionRecord, ExecutionStatus, StepStatus, utcnow
from workflows.repository import WorkflowRepository


def run_execution(
    workflow_id: str,
    input_data: dict[str, Any] | None,
    *,
    execution_id: str,
    repository: WorkflowRepository | None = None,
    engine: WorkflowEngine | None = None,
    should_cancel: ShouldCancel | None = None,
    on_step: OnStep | None = None,
    record_running: bool = True,
) -> tuple[ExecutionRecord, bool]:
    """Run workflow ``workflow_id`` on ``input_data`` as execution ``execution_id`` and store the record.

    Returns ``(record, ran)``: ``ran`` is False when a finished record was already stored (nothing ran).
    ``record_running``: store a ``running`` record first, so the execution is visible while it runs.
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
    if record_running:
        repo.save_execution(
            ExecutionRecord(
                execution_id=execution_id,
                workflow_id=workflow_id,
                status=ExecutionStatus.RUNNING,
                input_data=input_data,
                started_at=utcnow(),
            )
        )
    record = run_engine.run(
        plan, input_data, execution_id=execution_id, should_cancel=should_cancel, on_step=on_step
    )
    repo.save_execution(record, listed=record_running)  # the running record wrote its marker
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
