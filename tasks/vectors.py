"""``vector_tasks``: embed workflows into the vector store (the guide's WorkflowSearchService).

One message per workflow, embedded and stored in batches: each task hands its item to this process's
:func:`~tasks.batching.batch_writer` (one ``store_vectors`` call, so one embedding request, per batch) and
returns once it is stored.
"""

from __future__ import annotations

from typing import Any

from tasks.app import app
from tasks.base import BaseTask
from tasks.batching import batch_writer
from tasks.writers import WRITERS
from workflows.documents import VECTOR_COLLECTION


@app.task(name="vector_tasks.embed_workflow", bind=True)
def embed_workflow(self: BaseTask, payload: dict[str, Any]) -> dict[str, Any]:
    (item,) = WRITERS["embed_workflow"].documents(payload)
    batch_writer("embed_workflow").submit([item])
    return {"collection": VECTOR_COLLECTION, "id": item["id"]}
