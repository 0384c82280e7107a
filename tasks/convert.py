"""Payload shapes the queue tasks accept. A task runs either from ``enqueue`` (``payload=`` the queue's
message) or as a step of a canvas pipeline (the parent task's result passed first). Both arrive here."""

from __future__ import annotations

from typing import Any

from fabric.contracts import Payload
from fabric.errors import InvalidInput
from workflows.documents import execution_from_record


def execution_doc(
    result: dict[str, Any] | None, payload: dict[str, Any] | None, model: type[Payload]
) -> dict[str, Any]:
    """The execution document a task should work on, from a pipeline ``result`` or an enqueued ``payload``."""
    if payload is not None:
        message = model.model_validate(payload)
        execution = getattr(message, "execution")  # noqa: B009 - every execution payload model has it
        return dict(execution.model_dump(mode="json", exclude_none=True))
    if result is None:
        raise InvalidInput("nothing to work on: neither a payload nor a pipeline result was given")
    return execution_from_record(result)
