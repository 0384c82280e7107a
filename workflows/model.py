"""The workflow model: a definition (a graph of typed steps) and the record of one execution.

Both are pydantic models serialised as JSON; the object store holds them (see :mod:`workflows.repository`).

Data flow between steps (the engine implements it, the step types rely on it):

* a root node (no incoming edge) receives the execution's ``input_data``;
* a node with one live predecessor receives that predecessor's output;
* a node with several live predecessors receives ``{predecessor_id: output, ...}`` (use the ``process``
  step's ``merge`` operation to fold those into one object).

An edge leaving a ``condition`` node carries a ``branch`` label (``"true"`` or ``"false"``); an edge whose
branch was not taken is dead, and a node whose incoming edges are all dead is skipped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from fabric.errors import InvalidInput

#: Ids become object names in the store (``workflows/{id}.json``), so they are kept to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (records never hold naive datetimes)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random id (32 hex digits)."""
    return uuid.uuid4().hex


class Node(BaseModel):
    """One step of a workflow: ``type`` names a registered step type, ``data`` is its configuration."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    type: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)


class Edge(BaseModel):
    """``source`` runs before ``target``. ``branch`` (alias ``condition``) labels edges of condition nodes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str
    target: str
    branch: str | None = Field(None, validation_alias=AliasChoices("branch", "condition"))


class WorkflowDefinition(BaseModel):
    """The graph of a workflow."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)


class Workflow(BaseModel):
    """A workflow as the guide defines it; :func:`workflows.validation.validate_workflow` checks the graph."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id, pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    category: str = "general"
    created_at: datetime = Field(default_factory=utcnow)
    definition: WorkflowDefinition = Field(default_factory=WorkflowDefinition)

    def searchable_text(self) -> str:
        """The text the guide indexes and embeds for a workflow: name, description, tags, category."""
        return " ".join([self.name, self.description, " ".join(self.tags), self.category]).strip()


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the states an execution never leaves (completed, failed, cancelled)."""
        return self in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


class StepStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    #: on a branch that a condition did not take
    SKIPPED = "skipped"
    #: never started because the execution failed or was cancelled first
    NOT_RUN = "not_run"


class StepLog(BaseModel):
    """What one step did. ``attempts`` counts tries (retries of transient errors included)."""

    step_id: str
    type: str
    status: StepStatus
    input: Any = None
    output: Any = None
    started_at: datetime | None = None
    duration_ms: float | None = None
    error: str | None = None
    attempts: int = 0
    #: the branch a condition step chose ("true"/"false"); None for other step types
    branch: str | None = None


class ExecutionRecord(BaseModel):
    """The record of one execution: the engine returns it and the object store keeps it as ``result.json``."""

    execution_id: str = Field(default_factory=new_id, pattern=ID_PATTERN)
    workflow_id: str
    status: ExecutionStatus = ExecutionStatus.PENDING
    input_data: dict[str, Any] = Field(default_factory=dict)
    output_data: Any = None
    error_message: str | None = None
    #: id of the step whose failure failed the execution
    failed_step: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    steps: list[StepLog] = Field(default_factory=list)

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to finish, or None while the execution has not finished."""
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds() * 1000.0

    def log_entries(self) -> list[dict[str, Any]]:
        """One log entry per step, shaped for the search service's ``index_log``.

        Each entry: ``id`` (stable: ``{execution_id}:{step_id}``, so re-indexing overwrites), ``timestamp``,
        ``level`` (ERROR for a failed step, INFO otherwise), ``message``, ``service``, ``execution_id``,
        ``workflow_id``, ``step_id``, ``step_type``, ``status``.
        """
        entries = []
        for step in self.steps:
            timestamp = step.started_at or self.started_at or utcnow()
            message = f"step {step.step_id} ({step.type}) {step.status.value}"
            if step.error:
                message += f": {step.error}"
            entries.append(
                {
                    "id": f"{self.execution_id}:{step.step_id}",
                    "timestamp": timestamp.isoformat(),
                    "level": "ERROR" if step.status is StepStatus.FAILED else "INFO",
                    "message": message,
                    "service": "workflow_engine",
                    "execution_id": self.execution_id,
                    "workflow_id": self.workflow_id,
                    "step_id": step.step_id,
                    "step_type": step.type,
                    "status": step.status.value,
                }
            )
        return entries


def parse_workflow(data: Any) -> Workflow:
    """Build a :class:`Workflow` from JSON-like ``data`` (a dict or a JSON string).

    Raises InvalidInput naming each field that is wrong (e.g. ``definition.nodes.2.id``). The graph itself is
    not checked here; :func:`workflows.validation.validate_workflow` does that.
    """
    try:
        if isinstance(data, str | bytes):
            return Workflow.model_validate_json(data)
        return Workflow.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid workflow: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``loc.path: message; ...``."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)
