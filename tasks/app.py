"""The Celery app: ``celery -A tasks.app worker``. Configured from :mod:`celeryconfig`; holds only the app."""

from __future__ import annotations

from celery import Celery

import celeryconfig
from config import get_settings
from tasks.leases import WorkerLease

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
# The configuration celeryconfig.py builds from the settings, computed when the app is first configured
# rather than when a module is imported, so the settings in force then apply (tests, CLI overrides).
app.add_defaults(lambda: celeryconfig.build(get_settings()))
# Lost-worker recovery on Redis brokers: each worker leases the messages it holds (see tasks.leases).
app.steps["consumer"].add(WorkerLease)
