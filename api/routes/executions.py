"""An execution's status, result, steps and logs; cancelling it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.auth import READ, WRITE
from api.routes.tracking import was_sent
from api.schemas import (
    AUTH,
    CancelRequested,
    Execution,
    ExecutionLogs,
    LogEntry,
    QueuedExecution,
    RecordedExecution,
    error_responses,
)
from fabric.errors import NotFound
from fabric.producer import DEAD_LETTERED, EXPIRED, get_message_queue
from services.search import get_search_service
from workflows.model import ID_PATTERN, ExecutionRecord
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository

router = APIRouter(tags=["executions"])

ExecutionId = Annotated[str, Path(pattern=ID_PATTERN, description="the execution's id")]

UNKNOWN_EXECUTION = "neither the store nor the queue knows an execution of that id"

#: Message states (no record stored yet) -> the execution status reported.
_UNRECORDED = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "STARTED": "running",
    "RETRY": "retrying",
    "SUCCESS": "completed",
    "FAILURE": "failed",
    "REVOKED": "revoked",
    EXPIRED: "expired",
    DEAD_LETTERED: "dead_lettered",
}


def _record_body(record: ExecutionRecord) -> RecordedExecution:
    body = record.model_dump(mode="json")
    body["result"] = body["output_data"]
    body["duration_ms"] = record.duration_ms
    return RecordedExecution.model_validate(body)


def _unrecorded(execution_id: str) -> QueuedExecution:
    """What the message says of an execution not recorded yet; NotFound when nothing knows it."""
    status = get_message_queue().get_status(execution_id)
    state = status["state"]
    if state == "PENDING" and not was_sent(execution_id):
        raise NotFound(
            f"no execution {execution_id!r} is known (it is not recorded, and this API did not queue it)"
        )
    return QueuedExecution.model_validate(
        {
            "execution_id": execution_id,
            "status": _UNRECORDED.get(state, state.lower()),
            "message_state": state,
            # A bulk item's status may leave these out; the body always has them.
            "attempts": status.get("attempts"),
            "error": status.get("error"),
            "steps": [],
            "result": None,
        }
    )


@router.get(
    "/executions/{execution_id}",
    dependencies=[READ],
    responses=error_responses(*AUTH, 404, 422, 503, notes={404: UNKNOWN_EXECUTION}),
)
def get_execution(execution_id: ExecutionId) -> Execution:
    """The execution's record (``status``, ``result``/``output_data``, ``steps`` ...). Before a worker has
    recorded it, its message's state: ``queued``, ``running``, ``retrying``, ``expired``, ``dead_lettered``
    .... 404 when neither the store nor the queue knows it."""
    record = WorkflowRepository().get_execution(execution_id)
    if record is not None:
        return _record_body(record)
    return _unrecorded(execution_id)


@router.get(
    "/executions/{execution_id}/logs",
    dependencies=[READ],
    response_model_exclude_unset=True,  # log entries as indexed: absent keys stay absent
    responses=error_responses(*AUTH, 422, 503),
)
def execution_logs(
    execution_id: ExecutionId,
    q: Annotated[str | None, Query(max_length=1000, description="words that must all match")] = None,
    level: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ExecutionLogs:
    """The execution's log entries (one per step) as indexed for search."""
    logs = get_search_service().search_logs(query=q, level=level, execution_id=execution_id, limit=limit)
    entries = [LogEntry.model_validate(entry) for entry in logs]
    return ExecutionLogs(execution_id=execution_id, total=len(entries), logs=entries)


@router.post(
    "/executions/{execution_id}/cancel",
    dependencies=[WRITE],
    status_code=202,
    responses=error_responses(
        *AUTH, 404, 409, 422, 503, notes={404: UNKNOWN_EXECUTION, 409: "the execution has already finished"}
    ),
)
def cancel_execution(execution_id: ExecutionId) -> CancelRequested:
    """Ask the execution to stop: it checks before each step and ends ``cancelled``. 404 for an unknown
    execution, 409 for one that has already finished."""
    record = WorkflowRepository().get_execution(execution_id)
    if record is not None and record.status.finished:
        raise HTTPException(409, f"execution {execution_id!r} has already finished ({record.status.value})")
    if record is None:
        _unrecorded(execution_id)  # raises NotFound for an execution nobody knows
    Pipelines().cancel_execution(execution_id)
    return CancelRequested(execution_id=execution_id, cancel_requested=True)
