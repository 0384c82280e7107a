"""Celery signal handlers of the workers: metrics (:mod:`services.metrics`) and structured logs
(:mod:`services.logging`). Loaded by the app's ``include`` list; holds no tasks.

- ``task_prerun``: start the clock; attach task id, name, queue and execution id to the log context.
- ``task_postrun``: tally the outcome and duration (added to Redis every half second); clear the log context.
- ``worker_process_shutdown`` / ``worker_shutdown``: add what is tallied to Redis and send the task-sent
  events still kept (:mod:`fabric.sent_events`) before the process ends.
- ``task_failure``: remember that the run failed (dead-lettered unless the task says otherwise).
- ``task_retry``: count the retry by error type.
- ``after_setup_logger`` / ``after_setup_task_logger``: JSON lines when ``LOG_JSON`` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

from config import get_settings
from fabric import sent_events
from fabric.dead_letters import DEAD_LETTER_TASK
from services import logging as structured
from services import metrics

# Per process (and per thread for the threads pool): task id -> (start time, log-context token).
_running: dict[str, tuple[float, Any]] = {}
_failed: dict[str, str] = {}
_lock = threading.Lock()


def _queue_of(task: Any) -> str | None:
    request = getattr(task, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    queue = delivery.get("routing_key") if isinstance(delivery, dict) else None
    return str(queue) if queue else (str(task.queue) if getattr(task, "queue", None) else None)


def _arguments(args: Any, kwargs: Any) -> dict[str, Any]:
    """The keyword arguments, plus a chain's parent result (passed as the first positional argument)."""
    merged = dict(kwargs) if isinstance(kwargs, dict) else {}
    if args and isinstance(args[0], dict) and "result" not in merged:
        merged["result"] = args[0]
    return merged


@signals.task_prerun.connect
def _on_prerun(task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    token = structured.set_task_context(
        task_id=task_id,
        task_name=getattr(task, "name", None),
        execution_id=structured.execution_id_of(_arguments(args, kwargs)),
        queue=_queue_of(task),
    )
    with _lock:
        _running[task_id] = (time.perf_counter(), token)


@signals.task_failure.connect
def _on_failure(task_id: str, sender: Any = None, **_: Any) -> None:
    dead_letters = getattr(sender, "dead_letter_on_failure", False)
    with _lock:
        _failed[task_id] = "dead_lettered" if dead_letters else "failure"


@signals.task_retry.connect
def _on_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    # Autoretry hands over a celery Retry whose ``exc`` is the error that caused it.
    cause = getattr(reason, "exc", None) or reason
    error = type(cause).__name__ if isinstance(cause, BaseException) else "unknown"
    metrics.record_retry(getattr(sender, "name", "unknown"), error)


@signals.task_postrun.connect
def _on_postrun(
    task_id: str, task: Any, kwargs: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    with _lock:
        started, token = _running.pop(task_id, (None, None))
        failed_as = _failed.pop(task_id, None)
    duration = time.perf_counter() - started if started is not None else None
    name = getattr(task, "name", "unknown")
    if state == "SUCCESS":
        outcome = "success"
    elif state == "RETRY":
        outcome = "retry"
    elif state == "FAILURE":
        outcome = failed_as or "failure"
    elif state == "REJECTED":
        outcome = "rejected"
    else:
        outcome = "ignored"  # Ignore(): e.g. a poison message, dead-lettered by the base task itself
    metrics.count_task(name, outcome, duration)
    # A redelivered dead letter is stored once (the consumer says whether it was new): count it once.
    if name == DEAD_LETTER_TASK and state == "SUCCESS" and isinstance(kwargs, dict):
        record = kwargs.get("record")
        if isinstance(record, dict) and isinstance(retval, dict) and retval.get("added"):
            metrics.record_dead_letter(str(record.get("queue")), str(record.get("reason")))
    structured.clear_task_context(token)


@signals.after_setup_logger.connect
def _json_root_logger(logger: logging.Logger, **_: Any) -> None:
    if get_settings().log_json:
        structured.use_json(logger)


@signals.after_setup_task_logger.connect
def _json_task_logger(logger: logging.Logger, **_: Any) -> None:
    if get_settings().log_json:
        structured.use_json(logger)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _send_what_is_kept(**_: Any) -> None:
    metrics.flush_task_counts()
    # The task-sent events of what this process sent (follow-ups, retries) and has not sent yet.
    sent_events.send_all_kept()
