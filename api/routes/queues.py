"""The producer API over HTTP: enqueue to a named queue, follow a message, queue depths, dead letters."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, Field

from api.auth import ADMIN_ONLY, ENQUEUE, READ
from api.routes.tracking import mark_sent
from api.schemas import (
    AUTH,
    DeadLetter,
    DeadLetters,
    MessageQueued,
    MessagesQueued,
    MessageStatus,
    QueueDepth,
    QueueDepths,
    Replayed,
    error_responses,
)
from config import QUEUES
from fabric.producer import get_message_queue

router = APIRouter(tags=["queues"])

CONTRACT = {422: "the queue is unknown, or a payload breaks its contract (the field at fault is named)"}


class EnqueueRequest(BaseModel):
    """What ``POST /queues/{queue}/messages`` takes: the payload of the queue's contract and options."""

    payload: dict[str, Any] = Field(description="the message, as the queue's contract defines it")
    priority: int | None = Field(None, description="0 (default) to 9; higher runs first")
    delay_seconds: float = Field(0, description="run no earlier than this many seconds from now")
    ttl_seconds: float | None = Field(None, description="never run if not started within this many seconds")


@router.post(
    "/queues/{queue}/messages",
    dependencies=[ENQUEUE],
    status_code=202,
    responses=error_responses(*AUTH, 400, 413, 422, 503, notes=CONTRACT),
)
def enqueue(
    queue: Annotated[str, Path(max_length=100)],
    request: Annotated[EnqueueRequest, Body()],
    response: Response,
) -> MessageQueued:
    """Validate the payload against the queue's contract and send it. 202 with its ``message_id``; 422
    naming the field at fault (nothing is sent)."""
    # Marked before it is sent, so a client polling at once never sees "unknown".
    message_id = mark_sent(str(uuid.uuid4()))
    get_message_queue().enqueue(
        queue,
        request.payload,
        priority=request.priority,
        delay_seconds=request.delay_seconds,
        ttl_seconds=request.ttl_seconds,
        message_id=message_id,
    )
    response.headers["Location"] = f"/messages/{message_id}"
    return MessageQueued(message_id=message_id, queue=queue, status="queued")


class BulkEnqueueRequest(BaseModel):
    """What ``POST /queues/{queue}/messages/bulk`` takes: many payloads of the queue's contract."""

    payloads: list[dict[str, Any]] = Field(min_length=1, max_length=10_000, description="the messages")
    priority: int | None = Field(None, description="0 (default) to 9; higher runs first")
    delay_seconds: float = Field(0, description="run no earlier than this many seconds from now")
    ttl_seconds: float | None = Field(None, description="never run if not started within this many seconds")


@router.post(
    "/queues/{queue}/messages/bulk",
    dependencies=[ENQUEUE],
    status_code=202,
    responses=error_responses(*AUTH, 400, 413, 422, 503, notes=CONTRACT),
)
def enqueue_bulk(
    queue: Annotated[str, Path(max_length=100)], request: Annotated[BulkEnqueueRequest, Body()]
) -> MessagesQueued:
    """Validate every payload, then send them all in as few broker round trips as possible
    (``enqueue_many``). 202 with one ``message_id`` per payload, in order; 422 naming the index and field of
    the first bad payload (nothing is sent)."""
    message_ids = get_message_queue().enqueue_many(
        queue,
        request.payloads,
        priority=request.priority,
        delay_seconds=request.delay_seconds,
        ttl_seconds=request.ttl_seconds,
    )
    return MessagesQueued(message_ids=message_ids, queue=queue, count=len(message_ids), status="queued")


@router.get(
    "/messages/{message_id}",
    dependencies=[READ],
    response_model_exclude_unset=True,  # a bulk item's status has fewer keys than a task's
    responses=error_responses(*AUTH, 422, 503),
)
def message_status(message_id: Annotated[str, Path(max_length=200)]) -> MessageStatus:
    """Where a message is: ``state`` (PENDING, STARTED, RETRY, SUCCESS, FAILURE, EXPIRED, REVOKED,
    DEAD_LETTERED), ``result`` or ``error``, ``attempts``. PENDING means queued, delayed or unknown."""
    return MessageStatus.model_validate(get_message_queue().get_status(message_id))


@router.get("/queues", dependencies=[READ], responses=error_responses(*AUTH, 503))
def queue_depths() -> QueueDepths:
    """Messages waiting and dead-lettered, for every queue."""
    mq = get_message_queue()
    return QueueDepths(queues=[QueueDepth.model_validate(mq.queue_stats(name)) for name in QUEUES])


@router.get(
    "/dead-letters",
    dependencies=[ADMIN_ONLY],
    response_model_exclude_unset=True,  # each record as it was dead-lettered
    responses=error_responses(
        *AUTH, 422, 503, notes={422: "an unknown queue, or a limit or offset out of range"}
    ),
)
def dead_letters(
    queue: Annotated[str | None, Query(max_length=100, description="only those from this queue")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DeadLetters:
    """Dead letters, newest first: the original message, the error, the attempts and the times."""
    records = get_message_queue().list_dead_letters(queue=queue, limit=limit, offset=offset)
    letters = [DeadLetter.model_validate(record) for record in records]
    return DeadLetters(total=len(letters), dead_letters=letters)


@router.post(
    "/dead-letters/{message_id}/replay",
    dependencies=[ADMIN_ONLY],
    status_code=202,
    responses=error_responses(*AUTH, 404, 422, 503, notes={404: "no dead letter of that id"}),
)
def replay_dead_letter(message_id: Annotated[str, Path(max_length=200)], response: Response) -> Replayed:
    """Send the dead letter's original message again to its queue, as a new message. 202 with the new
    ``message_id``; 404 when there is no such dead letter."""
    new_id = get_message_queue().replay_dead_letter(message_id)
    mark_sent(new_id)
    response.headers["Location"] = f"/messages/{new_id}"
    return Replayed(message_id=new_id, replayed=message_id)
