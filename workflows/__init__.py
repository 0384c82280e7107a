"""Workflows: the model (a graph of typed steps), validation, step types, the engine and the repository.

Public API::

    from workflows import (WorkflowRepository, WorkflowEngine, execute_workflow, validate_workflow,
                           parse_workflow, Workflow, ExecutionRecord, register_step_type)

The ``workflow_execution`` task calls ``run_execution(workflow_id, input_data, execution_id=...,
should_cancel=...)``: it skips an execution already finished in the store (idempotent by execution id), runs
the workflow and stores the record. The parts are public too: ``WorkflowRepository().get_workflow(id)``,
``execute_workflow(workflow, input_data, ...)``, ``WorkflowRepository().save_execution(record)``.
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
from workflows.service import run_execution
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
    "run_execution",
    "validate_workflow",
]
