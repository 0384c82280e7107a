"""``indexing_tasks``: index workflows, executions and their logs into the search service.

One message per document, written in bulk: each task hands its documents to a per-process
:class:`~tasks.batching.BatchWriter` and returns once they are written (see :mod:`tasks.batching`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fabric.contracts import IndexExecution, IndexLog, IndexWorkflow
from services.search import get_search_service
from services.search.base import log_id
from tasks.app import app
from tasks.base import BaseTask
from tasks.batching import BatchWriter
from tasks.convert import execution_doc

_EXECUTION_FIELDS = ("workflow_id", "status", "started_at", "completed_at", "error_message", "input_data",
                     "output_data")  # fmt: skip

Doc = dict[str, Any]


def _by_id(doc: Doc) -> str:
    return str(doc["id"])


def _log_key(entry: Doc) -> str:
    given = entry.get("id")
    return str(given) if given is not None else log_id(entry)


@cache
def workflow_writer() -> BatchWriter[Doc]:
    """This process's bulk writer of workflow documents (``bulk_index_workflows``)."""
    return BatchWriter(
        "index_workflows", lambda docs: get_search_service().bulk_index_workflows(docs), key=_by_id
    )


@cache
def execution_writer() -> BatchWriter[Doc]:
    """This process's bulk writer of execution documents (``bulk_index_executions``)."""
    return BatchWriter(
        "index_executions", lambda docs: get_search_service().bulk_index_executions(docs), key=_by_id
    )


@cache
def log_writer() -> BatchWriter[Doc]:
    """This process's bulk writer of log entries (``bulk_index_logs``)."""
    return BatchWriter("index_logs", lambda docs: get_search_service().bulk_index_logs(docs), key=_log_key)


@app.task(name="indexing_tasks.index_workflow", bind=True)
def index_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    workflow = IndexWorkflow.model_validate(payload).workflow.model_dump(mode="json", exclude_none=True)
    workflow_writer().submit([workflow])
    return {"indexed": "workflows", "id": workflow["id"]}


@app.task(name="indexing_tasks.index_execution", bind=True)
def index_execution(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index one execution, from an ``index_execution`` payload or the record of the pipeline's execution."""
    execution = execution_doc(result, payload, IndexExecution)
    data = {k: execution[k] for k in _EXECUTION_FIELDS if k in execution}
    data["id"] = execution["id"]
    execution_writer().submit([data])
    return {"indexed": "executions", "id": execution["id"]}


@app.task(name="indexing_tasks.index_logs", bind=True)
def index_logs(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index the step logs of one execution (in a bulk write shared with other messages)."""
    execution = execution_doc(result, payload, IndexExecution)
    count = log_writer().submit(execution.get("logs", []))
    return {"indexed": "logs", "execution_id": execution["id"], "count": count}


@app.task(name="indexing_tasks.index_log", bind=True)
def index_log(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    entry = IndexLog.model_validate(payload).entry.model_dump(mode="json", exclude_none=True)
    log_writer().submit([entry])
    return {"indexed": "logs", "id": _log_key(entry)}
