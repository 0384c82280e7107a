"""``vector_tasks``: embed workflows into the vector store (the guide's WorkflowSearchService).

One message per workflow, embedded and stored in batches: each task hands its item to a per-process
:class:`~tasks.batching.BatchWriter` (one ``store_vectors`` call, so one embedding request, per batch) and
returns once it is stored.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fabric.contracts import EmbedWorkflow, WorkflowDoc
from services.vectors import get_vector_service
from tasks.app import app
from tasks.base import BaseTask
from tasks.batching import BatchWriter

COLLECTION = "workflows"


def workflow_vector_item(workflow: WorkflowDoc) -> dict[str, Any]:
    """The text and metadata the guide stores for a workflow, keyed by its id (a redelivery replaces it)."""
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


@cache
def vector_writer() -> BatchWriter[dict[str, Any]]:
    """This process's batched writer of workflow vectors (``store_vectors`` into ``workflows``)."""
    return BatchWriter(
        "embed_workflows",
        lambda items: get_vector_service().store_vectors(COLLECTION, items),
        key=lambda item: str(item["id"]),
    )


@app.task(name="vector_tasks.embed_workflow", bind=True)
def embed_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    item = workflow_vector_item(EmbedWorkflow.model_validate(payload).workflow)
    item["metadata"] = {k: v for k, v in item["metadata"].items() if v is not None}
    vector_writer().submit([item])
    return {"collection": COLLECTION, "id": item["id"]}
