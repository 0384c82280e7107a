"""The named queues, declared once. Celery routes, producers and the CLI all read these names."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    WORKFLOW_EXECUTION = "workflow_execution"
    INDEXING = "indexing_tasks"
    VECTORS = "vector_tasks"
    ANALYTICS = "analytics_tasks"
    DEAD_LETTER = "dead_letter"


#: Every queue, in the order a worker started with no ``-Q`` consumes them.
QUEUES: tuple[Queue, ...] = tuple(Queue)

#: Queues a producer may enqueue to. Dead letters arrive only through dead-lettering and replay.
WORK_QUEUES: tuple[Queue, ...] = tuple(q for q in Queue if q is not Queue.DEAD_LETTER)
