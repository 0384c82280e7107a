"""How each bulk-capable action's documents are written: one writer per action, and one fallback.

Both consumers of one-document-at-a-time work call these: the per-message tasks (``index_execution``,
``embed_workflow`` ..., through a per-process :class:`~tasks.batching.BatchWriter` that gathers concurrent
messages into one bulk write) and the envelope consumer (:mod:`tasks.bulk`, which has many documents in hand).

- :data:`WRITERS`: for each action of the contract (:mod:`fabric.contracts`), how a payload becomes
  documents, how documents are written in one bulk call, and what identifies a document (within one bulk
  write the last of two documents with the same key wins, as two upserts would).
- :func:`write_groups`: the one fallback. The documents of many messages go in one bulk call; if it is
  refused for bad input (:class:`~fabric.errors.PermanentError`), each message's documents are written on
  their own, so only the bad message fails. Any other error (transient: a backend down) is the caller's to
  retry, for every message.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from celery.utils.log import get_task_logger

from fabric.contracts import (
    EmbedWorkflow,
    IndexAndCountExecution,
    IndexExecution,
    IndexWorkflow,
    LogEntryDoc,
    UpdateWorkflowStats,
)
from fabric.errors import InvalidInput, PermanentError
from services.analytics import WorkflowStats
from services.search import get_search_service
from services.search.base import log_id
from services.vectors import get_vector_service
from workflows.documents import VECTOR_COLLECTION, workflow_vector_item

logger = get_task_logger(__name__)

Doc = dict[str, Any]

#: What an execution's search document keeps (its logs are indexed apart, as log entries).
EXECUTION_FIELDS = (
    "id", "workflow_id", "status", "started_at", "completed_at", "error_message", "input_data", "output_data",
)  # fmt: skip
_LOG_SERVICE_DEFAULT = LogEntryDoc.model_fields["service"].default


@dataclass(frozen=True)
class Writer:
    """The bulk writer of one action."""

    #: Name in the flush counters (:func:`tasks.batching.batch_stats`).
    name: str
    #: The documents of one payload of the action; raises PermanentError (InvalidInput) for a bad one.
    documents: Callable[[Any], list[Doc]]
    #: One bulk call for many documents; raises PermanentError when it refuses them for bad input.
    write: Callable[[list[Any]], object]
    #: What identifies a document (None: every document is its own).
    key: Callable[[Any], Hashable] | None = None


def _dump(model: Any) -> Doc:
    return dict(model.model_dump(mode="json", exclude_none=True))


def execution_fields(execution: Doc) -> Doc:
    """The search document of an execution."""
    return {k: execution[k] for k in EXECUTION_FIELDS if k in execution}


def _log_entries(payload: Any) -> list[Doc]:
    # Logs are the bulk of the traffic, so they are checked once, by the search service's own validation
    # (which names the bad field), instead of by the payload model too. The producer has already applied
    # the model's defaults; an envelope from elsewhere gets the one that changes what a search finds.
    entry = payload.get("entry") if isinstance(payload, dict) else None
    if not isinstance(entry, dict):
        raise InvalidInput(f"payload.entry must be a JSON object, got {type(entry).__name__}")
    return [entry if "service" in entry else {**entry, "service": _LOG_SERVICE_DEFAULT}]


def log_key(entry: Doc) -> str:
    given = entry.get("id")
    return str(given) if given is not None else log_id(entry)


def _vector_item(payload: Any) -> list[Doc]:
    item = workflow_vector_item(EmbedWorkflow.model_validate(payload).workflow)
    item["metadata"] = {k: v for k, v in item["metadata"].items() if v is not None}
    return [item]


def _stats_row(payload: Any) -> list[Doc]:
    message = UpdateWorkflowStats.model_validate(payload)
    return [{**_dump(message.execution), "workflow_id": message.workflow_id}]


def _by_id(doc: Doc) -> str:
    return str(doc["id"])


def write_follow_ups(executions: list[Doc]) -> None:
    """What follows many finished executions, through the writers of the three actions it stands for:
    count them (first, so an execution is counted even if its documents are refused), index them, index
    their logs. Each is idempotent (an execution is counted once per id, documents are upserts), so a
    retry of the whole is safe."""
    _write(WRITERS["update_workflow_stats"], executions)
    _write(WRITERS["index_execution"], [execution_fields(execution) for execution in executions])
    _write(WRITERS["index_log"], [entry for execution in executions for entry in execution.get("logs", [])])


WRITERS: dict[str, Writer] = {
    "index_workflow": Writer(
        "index_workflows",
        lambda payload: [_dump(IndexWorkflow.model_validate(payload).workflow)],
        lambda docs: get_search_service().bulk_index_workflows(docs),
        _by_id,
    ),
    "index_execution": Writer(
        "index_executions",
        lambda payload: [execution_fields(_dump(IndexExecution.model_validate(payload).execution))],
        lambda docs: get_search_service().bulk_index_executions(docs),
        _by_id,
    ),
    "index_and_count_execution": Writer(
        "execution_follow_ups",
        lambda payload: [_dump(IndexAndCountExecution.model_validate(payload).execution)],
        write_follow_ups,
        _by_id,
    ),
    "index_log": Writer(
        "index_logs", _log_entries, lambda docs: get_search_service().bulk_index_logs(docs), log_key
    ),
    "embed_workflow": Writer(
        "embed_workflows",
        _vector_item,
        lambda items: get_vector_service().store_vectors(VECTOR_COLLECTION, items),
        _by_id,
    ),
    "update_workflow_stats": Writer(
        "update_workflow_stats",
        _stats_row,
        lambda rows: WorkflowStats().record_many((row["workflow_id"], row) for row in rows),
        _by_id,
    ),
}


def write_groups(writer: Writer, groups: Sequence[Sequence[Any]]) -> dict[int, PermanentError]:
    """Write the documents of every group (one message's documents) in one bulk call, the last of each key
    winning. If that is refused for bad input, write each group on its own.

    Returns the groups refused for bad input, by index; raises any other error of a bulk call.
    """
    try:
        _write(writer, [doc for group in groups for doc in group])
        return {}
    except PermanentError as exc:
        if len(groups) == 1:
            return {0: exc}
        logger.warning("%s: bulk write of %d messages refused (%s); writing them one by one", writer.name,
                       len(groups), exc)  # fmt: skip
    failed: dict[int, PermanentError] = {}
    for index, group in enumerate(groups):
        try:
            _write(writer, list(group))
        except PermanentError as exc:
            failed[index] = exc
    return failed


def _write(writer: Writer, docs: list[Any]) -> None:
    if writer.key is not None:
        docs = list({writer.key(doc): doc for doc in docs}.values())
    if docs:
        writer.write(docs)
