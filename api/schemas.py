"""What the API answers, as pydantic models: the OpenAPI document (and so a generated client) describes every
body from these, and FastAPI checks each answer against its route's model before sending it.

Models of bodies a service builds (records, search hits, statuses, dead letters, health checks) allow extra
keys: they declare the keys every backend gives, and pass on whatever else a backend adds, so a new field
in a service reaches clients instead of being dropped. Routes whose bodies leave optional keys out answer
with ``response_model_exclude_unset=True``: a key the service did not give is not added as ``null``.

Every error is :class:`ErrorBody`; :func:`error_responses` builds the ``responses=`` a route declares for the
statuses it can answer with one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ErrorBody
from workflows.model import ExecutionStatus, StepLog, Workflow


class Open(BaseModel):
    """A body built by a service: the declared keys, plus any other key the service gives."""

    model_config = ConfigDict(extra="allow")


# --- errors (the body is api.errors.ErrorBody) ------------------------------------------------------------

#: When each status is answered, for the routes that can answer it.
ERROR_DESCRIPTIONS = {
    400: "the body cannot be parsed (not JSON, or a broken multipart form)",
    401: "no API key, or not a configured one (X-API-Key header or Bearer token)",
    403: "the API key lacks the scope this route requires",
    404: "no such resource",
    409: "the resource is in a state that does not allow this",
    413: "the request body is larger than API_MAX_BODY_BYTES",
    422: "the request is invalid: a parameter or body field (details lists each) or the payload's contract",
    503: "a backend (broker, store, index) is unavailable; retry after Retry-After seconds",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer realm", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}

#: The statuses every route behind an API key can answer.
AUTH = (401, 403)


def error_responses(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that answers ``statuses`` with :class:`ErrorBody`. ``notes`` replaces
    the general description of a status with what it means on this route. Raises KeyError for a status
    without a description in :data:`ERROR_DESCRIPTIONS`."""
    notes = notes or {}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "model": ErrorBody,
            "description": notes.get(status, ERROR_DESCRIPTIONS[status]),
        }
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[status] = response
    return responses


BINARY = {"schema": {"type": "string", "format": "binary"}}


# --- health -----------------------------------------------------------------------------------------------


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class ServiceCheck(Open):
    """One check of the readiness report; a check adds what it found (``workers``, ``depths`` ...)."""

    status: Literal["healthy", "unhealthy"]
    latency_ms: float | None = None
    error: str | None = Field(None, description="why the check failed")


class Readiness(Open):
    """Every backend, the workers and the queue depths."""

    overall_status: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="unhealthy when the broker is down (503), degraded when anything else is"
    )
    services: dict[str, ServiceCheck]
    timestamp: str


# --- files ------------------------------------------------------------------------------------------------


class UploadedFile(BaseModel):
    """Where an upload was stored."""

    file_path: str = Field(description="bucket/object of the stored file")
    download_url: str = Field(description="a presigned URL that fetches the file without a key")
    filename: str


# --- workflows --------------------------------------------------------------------------------------------


class WorkflowDocument(Workflow):
    """A stored workflow. Every field is present in answers (only an edge's ``branch`` may be left out)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class WorkflowRegistered(BaseModel):
    """A stored workflow and the indexing and embedding messages sent for it."""

    workflow_id: str
    messages: list[str] = Field(description="ids of the index and embed messages (GET /messages/{id})")


class WorkflowList(BaseModel):
    total: int = Field(description="stored workflows, all pages")
    workflows: list[WorkflowDocument]


class ExecutionQueued(BaseModel):
    """An execution sent to the workflow_execution queue."""

    execution_id: str = Field(description="poll GET /executions/{execution_id}")
    workflow_id: str
    status: Literal["queued"]


class SimilarWorkflow(Open):
    workflow_id: str
    name: str
    similarity_score: float
    tags: list[str] = []


class SimilarWorkflows(BaseModel):
    workflow_id: str
    total: int
    results: list[SimilarWorkflow]


class Durations(BaseModel):
    p50: float | None
    p95: float | None


class WorkflowStats(Open):
    """Runs of a workflow by status, its success rate and durations."""

    workflow_id: str
    runs: int
    by_status: dict[str, int]
    success_rate: float | None = Field(description="completed / runs; null before the first run")
    duration_ms: Durations
    last_run: str | None = Field(description="ISO-8601")
    last_status: str | None
    last_execution: str | None


# --- executions -------------------------------------------------------------------------------------------


class MessageError(Open):
    """Why a message failed."""

    type: str
    message: str


class RecordedExecution(Open):
    """An execution a worker has recorded."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    input_data: dict[str, Any]
    output_data: Any = None
    result: Any = Field(None, description="the same as output_data")
    error_message: str | None = None
    failed_step: str | None = Field(None, description="the step whose failure failed the execution")
    started_at: str | None = Field(None, description="ISO-8601")
    completed_at: str | None = Field(None, description="ISO-8601")
    duration_ms: float | None = None
    steps: list[StepLog]


class QueuedExecution(Open):
    """An execution no worker has recorded yet: what its message says."""

    execution_id: str
    status: str = Field(
        description="queued, running, retrying, completed, failed, revoked, expired or dead_lettered"
    )
    message_state: str = Field(description="the message's state (GET /messages/{id})")
    attempts: int | None
    error: MessageError | None
    steps: list[StepLog]
    result: Any = None


Execution = RecordedExecution | QueuedExecution


class LogEntry(Open):
    """One log entry (one per step of an execution) as indexed for search."""

    id: str
    timestamp: str
    level: str
    message: str
    service: str | None = None
    execution_id: str | None = None
    workflow_id: str | None = None
    step_id: str | None = None
    step_type: str | None = None
    status: str | None = None


class ExecutionLogs(BaseModel):
    execution_id: str
    total: int
    logs: list[LogEntry]


class CancelRequested(BaseModel):
    execution_id: str
    cancel_requested: Literal[True]


# --- search -----------------------------------------------------------------------------------------------


class WorkflowHit(Open):
    """A workflow found by text: its indexed document."""

    id: str
    name: str
    description: str | None = None
    tags: list[str] | None = None
    category: str | None = None
    score: float | None = Field(None, description="higher is better")


class WorkflowSearchResults(BaseModel):
    query: str
    total: int
    results: list[WorkflowHit]


class ExecutionHit(Open):
    """An execution found by workflow, status or time: its indexed document."""

    id: str
    workflow_id: str
    status: str
    started_at: str | None = None
    completed_at: str | None = None


class ExecutionSearchResults(BaseModel):
    total: int
    results: list[ExecutionHit]


class Recommendation(Open):
    workflow_id: str
    name: str
    similarity_score: float
    tags: list[str] = []
    category: str | None = None


class Recommendations(BaseModel):
    interests: list[str]
    total: int
    results: list[Recommendation]


# --- queues -----------------------------------------------------------------------------------------------


class MessageQueued(BaseModel):
    message_id: str = Field(description="poll GET /messages/{message_id}")
    queue: str
    status: Literal["queued"]


class MessagesQueued(BaseModel):
    message_ids: list[str] = Field(description="one per payload, in order")
    queue: str
    count: int
    status: Literal["queued"]


class DeadLetter(Open):
    """A message that failed for good or exhausted its deliveries, as it was dead-lettered. The store needs
    only ``id``, ``queue`` and ``dead_lettered_at``; the project's workers give every other key."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    queue: str = Field(description="the queue it came from")
    dead_lettered_at: float = Field(description="seconds since the epoch")
    task: str | None = None
    reason: str | None = Field(None, description="permanent, retries_exhausted, poison or error")
    error: MessageError | None = None
    # The store's key is "kwargs": as a field name it would clash with the **kwargs of the model's __init__.
    original_kwargs: dict[str, Any] | None = Field(
        None, alias="kwargs", description="the original message's arguments ({payload: ...})"
    )
    priority: int | None = None
    attempts: int | None = None
    retries: int | None = None
    worker: str | None = None
    eta: str | None = None
    failed_at: float | None = None
    envelope: str | None = Field(None, description="the bulk envelope that carried it")


class MessageStatus(Open):
    """Where a message is. Keys other than ``id`` and ``state`` are left out when nothing knows them."""

    id: str
    state: str = Field(
        description="PENDING (queued, delayed or unknown), STARTED, RETRY, SUCCESS, FAILURE, EXPIRED, "
        "REVOKED or DEAD_LETTERED"
    )
    result: Any = None
    error: MessageError | None = None
    attempts: int | None = None
    task: str | None = None
    queue: str | None = None
    # Celery's result gives an ISO-8601 string; a bulk envelope's record, the time.time() it was written.
    date_done: str | float | None = Field(
        None, description="when it finished: ISO-8601 for a task, seconds since the epoch for a bulk item"
    )
    dead_letter: DeadLetter | None = None
    envelope: str | None = Field(None, description="the bulk envelope that carried it")


class QueueDepth(BaseModel):
    queue: str
    pending: int = Field(description="messages waiting in the broker, every priority")
    dead_lettered: int


class QueueDepths(BaseModel):
    queues: list[QueueDepth]


class DeadLetters(BaseModel):
    total: int
    dead_letters: list[DeadLetter]


class Replayed(BaseModel):
    message_id: str = Field(description="the new message")
    replayed: str = Field(description="the dead letter it was sent from")
