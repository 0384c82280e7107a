"""``analytics_tasks``: per-workflow statistics, counted once per execution."""

from __future__ import annotations

from typing import Any

from fabric.contracts import UpdateWorkflowStats
from services.analytics import WorkflowStats
from tasks.app import app
from tasks.base import BaseTask
from tasks.convert import execution_doc


@app.task(name="analytics_tasks.update_workflow_stats", bind=True)
def update_workflow_stats(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    execution = execution_doc(result, payload, UpdateWorkflowStats)
    counted = WorkflowStats().record(execution["workflow_id"], execution)
    return {"workflow_id": execution["workflow_id"], "execution_id": execution["id"], "counted": counted}
