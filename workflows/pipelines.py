"""The pipelines, composed from Celery canvas by task name (producers need none of the worker code):

- workflow registered: stored in the object store, then ``group(index_workflow, embed_workflow)``;
- execution requested: ``chain(execute, group(index_execution, index_logs, update_workflow_stats))``
  (the chain is declared with the ``execute`` action in :mod:`fabric.contracts`, so the guide's plain
  ``enqueue("workflow_execution", ...)`` runs the whole pipeline too);
- reindex: every workflow and execution in the object store sent again through the indexing and vector
  queues (writes are upserts by id, so a reindex never duplicates).

On top of these, the guide's WorkflowEventHandler, WorkflowSearchService and RecommendationService.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from fabric import keys
from fabric.errors import InvalidInput, NotFound
from fabric.producer import MessageQueue, get_message_queue
from fabric.redis_clients import get_redis
from services.vectors import get_vector_service
from workflows.model import ExecutionRecord, Workflow, parse_workflow
from workflows.repository import WorkflowRepository

VECTOR_COLLECTION = "workflows"
REINDEX_CURSOR = keys.REINDEX_CURSOR
Progress = Callable[[str, int, int], None]
CANCEL_TTL = timedelta(days=1)


def cancel_key(execution_id: str) -> str:
    """The Redis key a running execution checks between steps (see ``tasks.execution``)."""
    return keys.cancel(execution_id)


def workflow_document(workflow: Workflow) -> dict[str, Any]:
    """The workflow as the guide's queues carry it (``id``, ``name``, ``description``, ``tags`` ...)."""
    return workflow.model_dump(mode="json", exclude_none=True)


class Pipelines:
    """Register workflows, request and cancel executions, rebuild the derived indexes."""

    def __init__(
        self, queue: MessageQueue | None = None, repository: WorkflowRepository | None = None
    ) -> None:
        self.queue = queue or get_message_queue()
        self.repository = repository or WorkflowRepository()

    def register_workflow(self, data: Mapping[str, Any] | Workflow) -> dict[str, Any]:
        """Validate and store a workflow, then index and embed it. Returns its id and the two message ids.

        Raises :class:`InvalidInput` naming the node at fault; nothing is stored then.
        """
        workflow = data if isinstance(data, Workflow) else parse_workflow(dict(data))
        existing = self._existing(workflow.id)
        if existing is not None and existing.created_at is not None:
            # Registering again keeps the original creation time.
            workflow = workflow.model_copy(update={"created_at": existing.created_at})
        self.repository.save_workflow(workflow)
        document = workflow_document(workflow)
        ids = self.queue.enqueue_group(
            [
                ("indexing_tasks", {"action": "index_workflow", "workflow": document}),
                ("vector_tasks", {"action": "embed_workflow", "workflow": document}),
            ]
        )
        return {"workflow_id": workflow.id, "messages": ids}

    def _existing(self, workflow_id: str) -> Workflow | None:
        try:
            return self.repository.get_workflow(workflow_id)
        except NotFound:
            return None

    def request_execution(
        self,
        workflow_id: str,
        input_data: Mapping[str, Any] | None = None,
        priority: int | None = None,
        delay_seconds: float = 0,
        ttl_seconds: float | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Queue an execution of a registered workflow; returns the execution id (also the message id).

        Raises :class:`NotFound` for an unknown workflow, before anything is queued.
        """
        if not self.repository.workflow_exists(workflow_id):
            raise NotFound(f"workflow {workflow_id!r} is not registered; register it first")
        payload: dict[str, Any] = {"workflow_id": workflow_id, "input_data": dict(input_data or {})}
        if execution_id is not None:
            payload["execution_id"] = execution_id
        return self.queue.enqueue(
            "workflow_execution", payload, priority=priority, delay_seconds=delay_seconds,
            ttl_seconds=ttl_seconds, message_id=execution_id,
        )  # fmt: skip

    def cancel_execution(self, execution_id: str) -> None:
        """Ask an execution to stop: it checks before each step and ends ``cancelled``."""
        if not execution_id:
            raise InvalidInput("execution_id is required")
        get_redis().set(cancel_key(execution_id), 1, ex=int(CANCEL_TTL.total_seconds()))

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        record = self.repository.get_execution(execution_id)
        if record is None:
            raise NotFound(f"no execution {execution_id!r} has been recorded (it may still be queued)")
        return record

    def reindex(
        self, progress: Progress | None = None, batch: int = 200, resume: bool = True
    ) -> dict[str, int]:
        """Send every stored workflow and finished execution through the indexing and vector queues again.

        Resumable: after each batch the last id sent is kept in Redis, and a later call with ``resume``
        (the default) continues after it; a finished reindex clears it. ``progress(phase, done, total)``
        is called after each batch. Returns how many workflows and executions were sent.
        """
        client = get_redis()
        cursor: dict[str, str] = {}
        if resume:
            raw = client.get(REINDEX_CURSOR)
            cursor = json.loads(raw) if raw else {}
        else:
            client.delete(REINDEX_CURSOR)
        sent = {"workflows": 0, "executions": 0}
        phases = (
            ("workflows", self.repository.list_workflow_ids(), self._workflow_messages),
            ("executions", self.repository.list_execution_ids(), self._execution_messages),
        )
        for index, (phase, ids, messages_for) in enumerate(phases):
            if cursor.get("phase") and [p for p, _, _ in phases].index(cursor["phase"]) > index:
                continue  # finished in an earlier run
            after = cursor.get("after") if cursor.get("phase") == phase else None
            todo = [i for i in ids if after is None or i > after]
            done = len(ids) - len(todo)
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                messages = [m for item_id in chunk for m in messages_for(item_id)]
                if messages:
                    self.queue.enqueue_group(messages)
                sent[phase] += len(chunk)
                done += len(chunk)
                client.set(REINDEX_CURSOR, json.dumps({"phase": phase, "after": chunk[-1]}))
                if progress is not None:
                    progress(phase, done, len(ids))
            if progress is not None and not todo:
                progress(phase, done, len(ids))
        client.delete(REINDEX_CURSOR)
        return sent

    def _workflow_messages(self, workflow_id: str) -> list[tuple[str, Mapping[str, Any]]]:
        try:
            document = workflow_document(self.repository.get_workflow(workflow_id))
        except NotFound:
            return []  # deleted since it was listed
        return [
            ("indexing_tasks", {"action": "index_workflow", "workflow": document}),
            ("vector_tasks", {"action": "embed_workflow", "workflow": document}),
        ]

    def _execution_messages(self, execution_id: str) -> list[tuple[str, Mapping[str, Any]]]:
        record = self.repository.get_execution(execution_id)
        if record is None or not record.status.finished:
            return []
        execution = execution_document(record)
        logs = execution.pop("logs", [])
        return [
            ("indexing_tasks", {"action": "index_execution", "execution": execution}),
            *(("indexing_tasks", {"action": "index_log", "entry": entry}) for entry in logs),
        ]


def execution_document(record: ExecutionRecord) -> dict[str, Any]:
    """The guide's execution shape (``id``, ``workflow_id``, ``status`` ..., ``logs``) from a record."""
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


# --- the guide's services on top of the pipelines ---------------------------------------------------


class WorkflowEventHandler:
    """The guide's event handler: a created workflow is indexed and embedded, a finished execution is
    indexed and counted, through the queues."""

    def __init__(self, queue: MessageQueue | None = None) -> None:
        self.message_queue = queue or get_message_queue()

    def handle_workflow_created(self, workflow: Mapping[str, Any]) -> list[str]:
        return self.message_queue.enqueue_group(
            [
                ("indexing_tasks", {"action": "index_workflow", "workflow": dict(workflow)}),
                ("vector_tasks", {"action": "embed_workflow", "workflow": dict(workflow)}),
            ]
        )

    def handle_execution_completed(self, execution: Mapping[str, Any]) -> list[str]:
        return self.message_queue.enqueue_group(
            [
                ("indexing_tasks", {"action": "index_execution", "execution": dict(execution)}),
                (
                    "analytics_tasks",
                    {
                        "action": "update_workflow_stats",
                        "workflow_id": execution["workflow_id"],
                        "execution": dict(execution),
                    },
                ),
            ]
        )


class WorkflowSearchService:
    """The guide's semantic search over workflows (vectors written by ``vector_tasks.embed_workflow``)."""

    def find_similar_workflows(
        self, query: str, limit: int = 5, score_threshold: float = 0.7
    ) -> list[dict[str, Any]]:
        results = get_vector_service().search_similar(
            collection_name=VECTOR_COLLECTION, query_text=query, limit=limit, score_threshold=score_threshold
        )
        return [
            {
                "workflow_id": r["metadata"]["workflow_id"],
                "name": r["metadata"]["name"],
                "similarity_score": r["score"],
                "tags": r["metadata"].get("tags", []),
            }
            for r in results
        ]


class RecommendationService:
    """The guide's context-aware recommendations: similar workflows for a user's interests, filtered by the
    categories and tags they asked to avoid or prefer."""

    def get_workflow_recommendations(
        self, user_context: Mapping[str, Any], limit: int = 5
    ) -> list[dict[str, Any]]:
        interests = [str(i) for i in user_context.get("interests", []) if str(i).strip()]
        if not interests:
            raise InvalidInput("user_context.interests must list at least one interest")
        context_text = f"User interested in {' '.join(interests)}"
        similar = get_vector_service().search_similar(
            collection_name=VECTOR_COLLECTION, query_text=context_text, limit=limit * 2, score_threshold=0.0
        )
        excluded = set(user_context.get("exclude_categories", []))
        recommendations = [
            {
                "workflow_id": w["metadata"]["workflow_id"],
                "name": w["metadata"]["name"],
                "similarity_score": w["score"],
                "tags": w["metadata"].get("tags", []),
                "category": w["metadata"].get("category"),
            }
            for w in similar
            if w["metadata"].get("category") not in excluded
        ]
        return recommendations[:limit]
