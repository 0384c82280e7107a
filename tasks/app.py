"""The Celery app: ``celery -A tasks.app worker``. Configured from :mod:`celeryconfig`; holds only the app."""

from __future__ import annotations

from celery import Celery

app = Celery(
    "wft",
    task_cls="tasks.base:BaseTask",
    include=[
        "tasks.execution",
        "tasks.indexing",
        "tasks.vectors",
        "tasks.analytics",
        "tasks.bulk",
        "tasks.maintenance",
        "tasks.dead_letter",
        "tasks.signals",
    ],
)
app.config_from_object("celeryconfig")
