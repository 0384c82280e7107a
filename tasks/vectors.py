"""``vector_tasks``: embed workflows into the vector store (the guide's WorkflowSearchService)."""

from __future__ import annotations

from typing import Any

from services.messages import EmbedWorkflow, WorkflowDoc
from services.vectors import get_vector_service
from tasks.app import app
from tasks.base import BaseTask

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


@app.task(name="vector_tasks.embed_workflow", bind=True)
def embed_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    item = workflow_vector_item(EmbedWorkflow.model_validate(payload).workflow)
    metadata = {k: v for k, v in item["metadata"].items() if v is not None}
    vector_id = get_vector_service().store_vector(COLLECTION, item["text"], metadata, vector_id=item["id"])
    return {"collection": COLLECTION, "id": vector_id}
