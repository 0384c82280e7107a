"""Structured JSON logs (``LOG_JSON=true``): one JSON object a line, carrying the task and execution ids,
written by python-json-logger.

    {"timestamp": "2026-11-26T11:40:02.113+00:00", "level": "INFO", "logger": "tasks.execution",
     "message": "...", "task_id": "...", "task_name": "workflow_execution.execute",
     "execution_id": "...", "queue": "workflow_execution", "process": 4242, "workflow_id": "..."}

Fields passed with ``logger.info("...", extra={"workflow_id": ...})`` come out as fields of their own (but
Celery's ``data``, which holds the task's arguments).

The task fields come from a context that :mod:`tasks.signals` sets when a task starts (``task_prerun``) and
clears when it ends, so every log line written while a task runs (by our code, a library or Celery) carries
them, and one execution can be followed across queues with ``jq 'select(.execution_id == "...")'``.
Secrets are kept out: URL passwords, ``Authorization`` headers and ``key=value`` pairs whose key names a
secret are masked in every message, traceback and ``extra`` value, and an ``extra`` field (or a key inside
one) whose name names a secret is masked whole.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

_task_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "wft_task_context", default=None
)

#: Fields of a task context, in the order they appear in a line.
CONTEXT_FIELDS = ("task_id", "task_name", "execution_id", "queue")

_SECRET_WORDS = r"(?:password|passwd|secret|api[_-]?key|token|access[_-]?key)"  # noqa: S105 - words that name secrets
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)"), r"\g<head>***"),
    # Authorization: Bearer xyz / Basic xyz
    (re.compile(r"(?i)(?P<head>authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic|apikey)?\s*)[^\s'\",}]+"),
     r"\g<head>***"),
    # password=..., api_key: ..., "secret_key": "..."
    (re.compile(rf"(?i)(?P<head>[\"']?\b[\w-]*{_SECRET_WORDS}[\w-]*[\"']?\s*[:=]\s*[\"']?)[^\s'\",}}&]+"),
     r"\g<head>***"),
)  # fmt: skip
#: A field name that names a secret: its whole value is masked.
_SECRET_NAME = re.compile(rf"(?i){_SECRET_WORDS}|authorization|credential")


def redact(text: str) -> str:
    """``text`` with URL passwords, authorization values and secret-named ``key=value`` values masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def set_task_context(**fields: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Attach ``task_id``, ``task_name``, ``execution_id``, ``queue`` to every log line of this thread
    until :func:`clear_task_context` is called with the returned token. ``None`` values are left out."""
    return _task_context.set({k: v for k, v in fields.items() if v is not None})


def clear_task_context(token: contextvars.Token[dict[str, str] | None] | None = None) -> None:
    """Forget the task context (restore the one before ``token``, or none)."""
    if token is not None:
        try:
            _task_context.reset(token)
            return
        except ValueError:  # the token came from another context (a signal in another thread)
            pass
    _task_context.set(None)


def task_context() -> dict[str, str]:
    """The task fields currently attached to log lines (a copy)."""
    return dict(_task_context.get() or {})


def execution_id_of(kwargs: Mapping[str, Any] | None) -> str | None:
    """The execution id a task's keyword arguments carry, if any: an ``execute`` payload's
    ``execution_id``, an execution document's ``id``, a log entry's ``execution_id``, or the id of the
    execution record a pipeline passes on as ``result``."""
    if not kwargs:
        return None
    payload = kwargs.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    result = kwargs.get("result")
    result = result if isinstance(result, Mapping) else {}
    candidates = (
        payload.get("execution_id"),
        _get(payload, "execution", "id"),
        _get(payload, "entry", "execution_id"),
        result.get("execution_id"),
        result.get("id"),
    )
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    record = kwargs.get("record")  # a dead letter: the original message's execution
    if isinstance(record, Mapping) and isinstance(record.get("kwargs"), Mapping):
        return execution_id_of(record["kwargs"])
    return None


def _get(mapping: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = mapping.get(outer)
    return value.get(inner) if isinstance(value, Mapping) else None


#: Record attributes that are not ``extra`` fields: the standard ones, and uvicorn's ``color_message`` (the
#: message again, with terminal colours).
_NOT_EXTRA = (*RESERVED_ATTRS, "taskName", "color_message")
#: Fields that a line's own data sets, which an ``extra`` of the same name cannot replace.
_OWN_FIELDS = ("timestamp", "level", "logger", "message", "process", "exc_info", "stack_info")


def _mask(value: Any, name: str | None = None) -> Any:
    """``value`` with secrets masked: a string whose field ``name`` names a secret entirely, any other string
    by :func:`redact`, containers item by item. Other values are left as they are."""
    if isinstance(value, str | bytes) and name is not None and _SECRET_NAME.search(name):
        return "***"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(v) for v in value]
    return value


class JsonFormatter(_LibraryJsonFormatter):
    """Formats a record as one JSON object (python-json-logger): timestamp (UTC, ISO 8601, milliseconds),
    level, logger, message, the task context, the process id, every ``extra`` field, and ``exc_info`` as text
    when there is one. Secrets are masked everywhere (see :func:`_mask`); values that are not JSON are
    written as text."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=_NOT_EXTRA, json_ensure_ascii=False)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Fill ``log_data`` for ``record``: our fields first (in this order), then the ``extra`` ones (which
        python-json-logger finds), then the task context, which an ``extra`` of the same name cannot fake."""
        log_data["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        extra: dict[str, Any] = {}
        super().add_fields(extra, record, message_dict)
        if record.name.startswith("celery."):
            # Celery's ``data`` repeats its message plus the task's arguments, which its own text format
            # leaves out too: payloads can hold personal data, and a bulk envelope's is a kilobyte of base64.
            extra.pop("data", None)
        for key, value in extra.items():
            if key not in _OWN_FIELDS:
                log_data[key] = value
        context = _task_context.get()
        if context:
            log_data.update(context)
        else:
            # Celery's own task logger records carry these when no context was set (e.g. eager calls).
            for name in ("task_id", "task_name"):
                value = getattr(record, name, None)
                if isinstance(value, str) and value and value != "???":
                    log_data[name] = value
                else:
                    log_data.pop(name, None)
        log_data["process"] = record.process
        for name in ("exc_info", "stack_info"):
            if extra.get(name):
                log_data[name] = extra[name]

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Mask the secrets of every field (the structural ones hold none of their own)."""
        return {
            key: value if key in ("timestamp", "level", "logger", "process") else _mask(value, key)
            for key, value in log_data.items()
        }


def use_json(logger: logging.Logger) -> None:
    """Make every handler of ``logger`` write JSON lines (what Celery's logging signals call)."""
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


def configure_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Set up the root logger for a process that is not a Celery worker (API, CLI, metrics server):
    ``LOG_LEVEL`` and, with ``LOG_JSON``, JSON lines on stderr. Arguments override the settings."""
    from config import get_settings

    settings = get_settings()
    root = logging.getLogger()
    root.setLevel((level or settings.log_level).upper())
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    if settings.log_json if json_lines is None else json_lines:
        use_json(root)
