"""``indexing_tasks``: index workflows, executions and their logs into the search service."""

from __future__ import annotations

from typing import Any

from services.messages import IndexExecution, IndexLog, IndexWorkflow
from services.search import get_search_service
from tasks.app import app
from tasks.base import BaseTask
from tasks.convert import execution_doc

_EXECUTION_FIELDS = ("workflow_id", "status", "started_at", "completed_at", "error_message", "input_data",
                     "output_data")  # fmt: skip


@app.task(name="indexing_tasks.index_workflow", bind=True)
def index_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    workflow = IndexWorkflow.model_validate(payload).workflow.model_dump(mode="json", exclude_none=True)
    doc_id = get_search_service().index_workflow(workflow["id"], workflow)
    return {"indexed": "workflows", "id": doc_id}


@app.task(name="indexing_tasks.index_execution", bind=True)
def index_execution(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index one execution, from an ``index_execution`` payload or the record of the pipeline's execution."""
    execution = execution_doc(result, payload, IndexExecution)
    data = {k: execution[k] for k in _EXECUTION_FIELDS if k in execution}
    doc_id = get_search_service().index_execution(execution["id"], data)
    return {"indexed": "executions", "id": doc_id}


@app.task(name="indexing_tasks.index_logs", bind=True)
def index_logs(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index the step logs of one execution in one bulk write."""
    execution = execution_doc(result, payload, IndexExecution)
    count = get_search_service().bulk_index_logs(execution.get("logs", []))
    return {"indexed": "logs", "execution_id": execution["id"], "count": count}


@app.task(name="indexing_tasks.index_log", bind=True)
def index_log(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    entry = IndexLog.model_validate(payload).entry.model_dump(mode="json", exclude_none=True)
    doc_id = get_search_service().index_log(entry)
    return {"indexed": "logs", "id": doc_id}
