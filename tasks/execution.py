"""``workflow_execution``: execute a registered workflow, idempotent by execution id."""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from services.messages import ExecuteWorkflow
from services.redis_client import get_redis
from tasks.app import app
from tasks.base import BaseTask
from workflows.pipelines import cancel_key
from workflows.service import run_execution

logger = get_task_logger(__name__)


@app.task(name="workflow_execution.execute", bind=True)
def execute(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    """Run the workflow and store its execution record; returns the record (JSON).

    A redelivered message for a finished execution returns the recorded result and repeats no step.
    Cancellation (``cancel_execution``) is honoured between steps.
    """
    message = ExecuteWorkflow.model_validate(payload)
    execution_id = message.execution_id or self.request.id
    client = get_redis()
    record, ran = run_execution(
        message.workflow_id,
        message.input_data,
        execution_id=execution_id,
        should_cancel=lambda: bool(client.exists(cancel_key(execution_id))),
    )
    logger.info(
        "execution %s of %s %s%s", execution_id, message.workflow_id, record.status.value,
        "" if ran else " (already finished: returned the recorded result)",
    )  # fmt: skip
    return record.model_dump(mode="json")
