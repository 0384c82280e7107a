"""The producer's front for workflows: register them, request and cancel executions, rebuild the indexes.
Composed from Celery canvas by task name (producers need none of the worker code):

- workflow registered: stored in the object store, then ``group(index_workflow, embed_workflow)``;
- execution requested: one ``workflow_execution.execute`` message; the worker that runs it attaches
  ``index_and_count_execution`` to its chain (``tasks.execution``), so an execution enqueued any other way
  gets the same pipeline;
- reindex: every workflow and execution in the object store sent again through the indexing and vector
  queues (writes are upserts by id, so a reindex never duplicates).

The documents these messages carry are shaped in :mod:`workflows.documents`; the guide's service classes
on top (event handler, similarity search, recommendations) are in :mod:`workflows.guide`.
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
from workflows.documents import Message, execution_document, workflow_document, workflow_messages
from workflows.model import ExecutionRecord, Workflow, parse_workflow
from workflows.repository import WorkflowRepository

REINDEX_CURSOR = keys.REINDEX_CURSOR
Progress = Callable[[str, int, int], None]
CANCEL_TTL = timedelta(days=1)


def cancel_key(execution_id: str) -> str:
    """The Redis key a running execution checks between steps (see ``tasks.execution``)."""
    return keys.cancel(execution_id)


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
        ids = self.queue.enqueue_group(workflow_messages(workflow_document(workflow)))
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

    def _workflow_messages(self, workflow_id: str) -> list[Message]:
        try:
            return workflow_messages(workflow_document(self.repository.get_workflow(workflow_id)))
        except NotFound:
            return []  # deleted since it was listed

    def _execution_messages(self, execution_id: str) -> list[Message]:
        record = self.repository.get_execution(execution_id)
        if record is None or not record.status.finished:
            return []
        execution = execution_document(record)
        logs = execution.pop("logs", [])
        return [
            ("indexing_tasks", {"action": "index_execution", "execution": execution}),
            *(("indexing_tasks", {"action": "index_log", "entry": entry}) for entry in logs),
        ]
