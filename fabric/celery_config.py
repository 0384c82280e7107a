"""Every Celery setting, derived from :mod:`config.settings`: queues, routes, acks, limits, beat.

:func:`build` is the one place the Celery configuration is made. The worker app (``tasks.app``) reads it
through the top-level ``celeryconfig`` module when Celery first reads its configuration; producers that need
none of the worker code build their own light app from it (:func:`fabric.producer.make_producer_app`).
Routes are declared here once: a task named ``<queue>.<something>`` runs on ``<queue>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue

from config import QUEUES, Settings
from fabric import keys
from fabric.result_backend import RedisResultBackend, backend_url
from fabric.transport import TRANSPORT

#: Broker-side priorities, 0-9 on every broker. Producers speak "higher runs first" and map to these.
PRIORITY_LEVELS = 10


def broker_is_redis(broker_url: str) -> bool:
    return urlparse(broker_url).scheme in {"redis", "rediss", "redis+socket"}


def broker_priority(priority: int, broker_url: str) -> int:
    """Map our priority (0 lowest .. 9 highest) to the broker's own convention.

    RabbitMQ runs higher numbers first; kombu's Redis transport pops the lowest number first.
    """
    return (PRIORITY_LEVELS - 1 - priority) if broker_is_redis(broker_url) else priority


@dataclass(frozen=True)
class RetryLimits:
    """A Celery task annotation: ``MAX_RETRIES`` and ``RETRY_BACKOFF_MAX`` set on each task class when the
    app binds it, from the settings the app was configured with (not those in force at import).

    A task class that sets ``retries_forever = True`` keeps ``max_retries = None`` (the dead-letter consumer
    retries for as long as it takes)."""

    max_retries: int
    retry_backoff_max: int

    def annotate(self, task: Any) -> dict[str, int | None]:
        forever = getattr(task, "retries_forever", False)
        return {
            "max_retries": None if forever else self.max_retries,
            "retry_backoff_max": self.retry_backoff_max,
        }


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``, as a dict for ``app.conf.update``."""
    broker_url = settings.effective_broker_url
    exchange = Exchange("tasks", type="direct")
    queues = tuple(
        KombuQueue(
            name,
            exchange,
            routing_key=name,
            # Honoured by RabbitMQ; the Redis transport emulates priorities with one list per level.
            queue_arguments={"x-max-priority": PRIORITY_LEVELS - 1},
        )
        for name in QUEUES
    )
    return {
        "broker_url": broker_url,
        # kombu's Redis transport, one client per channel instead of per operation (fabric.transport).
        "broker_transport": TRANSPORT if urlparse(broker_url).scheme == "redis" else None,
        # Celery's Redis backend, minus the arguments of bulk envelopes (see fabric.result_backend).
        "result_backend": backend_url(settings.effective_result_backend, RedisResultBackend),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Longer than the longest time a message may legitimately stay unacknowledged.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages abandoned by a dead worker every interval (kombu's default is ~100 s).
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(PRIORITY_LEVELS)),
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        # JSON only: a pickled message is refused by the worker, never executed.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "timezone": "UTC",
        "enable_utc": True,
        # At least once: ack after the task ran, requeue when the worker process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_annotations": (RetryLimits(settings.max_retries, settings.retry_backoff_max),),
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.result_expires,
        "result_extended": True,
        # STARTED is stored by the base task, with the delivery count, in one round trip (tasks.base).
        "task_track_started": False,
        # Flower needs task events from workers and "sent" events from producers. Workers send theirs in
        # batches a tenth of a second apart (fabric.consumer).
        "worker_send_task_events": True,
        "worker_consumer": "fabric.consumer:Consumer",
        "task_send_sent_event": True,
        "task_queues": queues,
        "task_default_queue": "workflow_execution",
        "task_default_exchange": exchange.name,
        "task_default_routing_key": "workflow_execution",
        "task_create_missing_queues": False,
        "task_routes": {f"{name}.*": {"queue": name, "routing_key": name} for name in QUEUES},
        # Messages sent without a priority (canvas, retries) rank as our lowest, not the broker's highest.
        "task_default_priority": broker_priority(0, broker_url),
        "task_queue_max_priority": PRIORITY_LEVELS - 1,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_log_format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        "worker_task_log_format": (
            "%(asctime)s %(levelname)s %(processName)s %(task_name)s[%(task_id)s]: %(message)s"
        ),
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        **beat(settings),
    }


def beat(settings: Settings) -> dict[str, Any]:
    """Celery beat's settings: the maintenance schedule (:mod:`tasks.maintenance`, routed to
    ``analytics_tasks``) kept in Redis by celery-redbeat, shared by every beat of the fleet.

    Each entry's last run time lives in Redis, so a restarted (or replaced) beat sends nothing early. A lock
    lets one beat of many send: the others wait as standbys and take over within ``BEAT_LOCK_TIMEOUT``
    seconds of the running one dying, and within a fifth of that when it stops cleanly (it releases the lock).
    """
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        # Redis even when the broker is RabbitMQ: the schedule and the lock need Redis commands.
        "redbeat_redis_url": settings.redis_url,
        # Said explicitly: redbeat would otherwise fall back to the broker's transport options (deprecated).
        # A Redis outage is retried for no longer than the lock lives; after that another beat may hold the
        # lock, and this one exits (redis-py's LockNotOwnedError) to be restarted as a standby.
        "redbeat_redis_options": {"retry_period": settings.beat_lock_timeout},
        "redbeat_key_prefix": keys.BEAT,
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        # Every tick renews the lock, and a standby retries the lock this often: well inside the timeout.
        "beat_max_loop_interval": max(1, settings.beat_lock_timeout // 5),
        "beat_schedule": {
            "expire-executions": {
                "task": "analytics_tasks.expire_executions",
                "schedule": settings.maintenance_expire_interval,
            },
            "reconcile-indexes": {
                "task": "analytics_tasks.reconcile_indexes",
                "schedule": settings.maintenance_reconcile_interval,
            },
        },
    }
