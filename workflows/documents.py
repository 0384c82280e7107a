"""The documents the queues carry and the indexes keep, shaped once: what a workflow and an execution
look like on ``indexing_tasks`` and ``vector_tasks`` and in the search and vector indexes.

Producers (:mod:`workflows.pipelines`, ``tasks.maintenance``) and workers (``tasks/``) both shape them here,
so a document indexed at registration, at an execution's end, by a reindex and by the reconciler is the
same document.
"""

from __future__ import annotations

import json
from typing import Any

from config.queues import Queue
from fabric.contracts import ExecutionDoc, WorkflowDoc
from workflows.model import ExecutionRecord, Workflow

#: The vector collection the workflows are embedded in.
VECTOR_COLLECTION = "workflows"

Message = tuple[str, dict[str, Any]]


def workflow_document(workflow: Workflow) -> dict[str, Any]:
    """The workflow as the queues carry it (``id``, ``name``, ``description``, ``tags`` ...)."""
    return workflow.model_dump(mode="json", exclude_none=True)


def index_workflow_message(document: dict[str, Any]) -> Message:
    return Queue.INDEXING.value, {"action": "index_workflow", "workflow": document}


def embed_workflow_message(document: dict[str, Any]) -> Message:
    return Queue.VECTORS.value, {"action": "embed_workflow", "workflow": document}


def workflow_messages(document: dict[str, Any]) -> list[Message]:
    """What makes a workflow findable: indexed for text search and embedded for similarity."""
    return [index_workflow_message(document), embed_workflow_message(document)]


def execution_document(record: ExecutionRecord) -> dict[str, Any]:
    """The execution as the queues carry it (``id``, ``workflow_id``, ``status`` ..., ``logs``)."""
    output = record.output_data if isinstance(record.output_data, dict) else {"value": record.output_data}
    document = {
        "id": record.execution_id,
        "workflow_id": record.workflow_id,
        "status": record.status.value,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "completed_at": record.completed_at.isoformat() if record.completed_at else None,
        "error_message": record.error_message,
        "input_data": record.input_data,
        "output_data": output,
        "logs": record.log_entries(),
    }
    return {k: v for k, v in json.loads(json.dumps(document)).items() if v is not None}


def execution_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The execution document from the record ``workflow_execution.execute`` returns (its JSON)."""
    document = execution_document(ExecutionRecord.model_validate(record))
    return ExecutionDoc.model_validate(document).model_dump(mode="json", exclude_none=True)


def workflow_vector_item(workflow: WorkflowDoc) -> dict[str, Any]:
    """The text and metadata stored for a workflow in the vector index, keyed by its id (a redelivery
    replaces it): the text the guide's similarity search compares, the fields its results show."""
    return {
        "id": workflow.id,
        "text": f"{workflow.name} {workflow.description}".strip(),
        "metadata": {
            "workflow_id": workflow.id,
            "name": workflow.name,
            "tags": list(workflow.tags),
            "created_at": workflow.created_at.isoformat() if workflow.created_at else None,
            "category": workflow.category,
        },
    }
