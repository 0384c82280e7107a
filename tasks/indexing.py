"""``indexing_tasks``: index workflows, executions and their logs into the search service.

One message per document, written in bulk: each task hands its documents to this process's
:func:`~tasks.batching.batch_writer` for its action (:mod:`tasks.writers`) and returns once they are written.
"""

from __future__ import annotations

from typing import Any

from fabric.contracts import IndexAndCountExecution, IndexExecution
from tasks.app import app
from tasks.base import BaseTask
from tasks.batching import batch_writer
from tasks.convert import execution_doc
from tasks.writers import WRITERS, execution_fields, log_key


@app.task(name="indexing_tasks.index_workflow", bind=True)
def index_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    (workflow,) = WRITERS["index_workflow"].documents(payload)
    batch_writer("index_workflow").submit([workflow])
    return {"indexed": "workflows", "id": workflow["id"]}


@app.task(name="indexing_tasks.index_execution", bind=True)
def index_execution(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index one execution, from an ``index_execution`` payload or the record of the pipeline's execution."""
    execution = execution_fields(execution_doc(result, payload, IndexExecution))
    batch_writer("index_execution").submit([execution])
    return {"indexed": "executions", "id": execution["id"]}


@app.task(name="indexing_tasks.index_and_count_execution", bind=True)
def index_and_count_execution(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What follows an execution, in one message (the pipeline's follow-up, :mod:`tasks.execution`): count
    it, index it and index its logs, in bulk writes shared with the other follow-ups this process runs."""
    execution = execution_doc(result, payload, IndexAndCountExecution)
    batch_writer("index_and_count_execution").submit([execution])
    return {
        "indexed": "executions",
        "id": execution["id"],
        "workflow_id": execution["workflow_id"],
        "logs": len(execution.get("logs", [])),
    }


@app.task(name="indexing_tasks.index_logs", bind=True)
def index_logs(
    self: BaseTask, result: dict[str, Any] | None = None, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Index the step logs of one execution (in a bulk write shared with other messages)."""
    execution = execution_doc(result, payload, IndexExecution)
    count = batch_writer("index_log").submit(execution.get("logs", []))
    return {"indexed": "logs", "execution_id": execution["id"], "count": count}


@app.task(name="indexing_tasks.index_log", bind=True)
def index_log(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    (entry,) = WRITERS["index_log"].documents(payload)
    batch_writer("index_log").submit([entry])
    return {"indexed": "logs", "id": log_key(entry)}
