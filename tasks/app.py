"""The Celery app: ``celery -A tasks.app worker``. Configured from :mod:`celeryconfig`; holds only the app."""

from __future__ import annotations

from celery import Celery

from fabric.leases import WorkerLease
from fabric.sent_events import ProducerAMQP

app = Celery(
    "wft",
    task_cls="tasks.base:BaseTask",
    # What workers send (follow-ups, retries, dead letters) has its task-sent events batched, as producers'.
    amqp=ProducerAMQP,
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
# Read when Celery first reads its configuration, from the settings in force then (tests, CLI overrides).
app.config_from_object("celeryconfig")
# Lost-worker recovery on Redis brokers: each worker leases the messages it holds (see fabric.leases).
app.steps["consumer"].add(WorkerLease)
