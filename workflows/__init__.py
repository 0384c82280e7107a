"""Workflows: the model (a graph of typed steps), validation, step types, the engine and the repository.

Public API::

    from workflows import (WorkflowRepository, WorkflowEngine, execute_workflow, validate_workflow,
                           parse_workflow, Workflow, ExecutionRecord, register_step_type)

Celery tasks load a definition with ``WorkflowRepository().get_workflow(id)``, skip an execution already
recorded (``get_execution(execution_id)`` is not None and finished), run it with
``execute_workflow(workflow, input_data, execution_id=..., should_cancel=...)`` and store the returned record
with ``save_execution``.
"""

from workflows.engine import WorkflowEngine, execute_workflow, get_engine, reset_engine
from workflows.model import (
    Edge,
    ExecutionRecord,
    ExecutionStatus,
    Node,
    StepLog,
    StepStatus,
    Workflow,
    WorkflowDefinition,
    parse_workflow,
)
from workflows.repository import ARTIFACTS_BUCKET, WORKFLOWS_BUCKET, WorkflowRepository
from workflows.steps import Step, StepConfig, StepContext, register_operation, register_step_type
from workflows.validation import WorkflowPlan, validate_workflow

__all__ = [
    "ARTIFACTS_BUCKET",
    "WORKFLOWS_BUCKET",
    "Edge",
    "ExecutionRecord",
    "ExecutionStatus",
    "Node",
    "Step",
    "StepConfig",
    "StepContext",
    "StepLog",
    "StepStatus",
    "Workflow",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowPlan",
    "WorkflowRepository",
    "execute_workflow",
    "get_engine",
    "parse_workflow",
    "register_operation",
    "register_step_type",
    "reset_engine",
    "validate_workflow",
]
