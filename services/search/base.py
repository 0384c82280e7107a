"""The search contract: the guide's three indices (workflows, executions, logs) behind one Protocol.

Both backends (SQLite FTS5, Elasticsearch) share the document normalisation below, so the same input is
accepted or refused the same way, stored the same way and given the same id everywhere:

- every write is an upsert by id, and a document is searchable as soon as the call that wrote it returns;
- text queries are split on whitespace and every chunk must match (AND); a chunk can never be read as
  query syntax by either engine;
- results are plain dicts: the stored document plus ``"id"`` (and ``"score"``, higher is better, when a
  text query ranked them);
- bad input raises :class:`~fabric.errors.InvalidInput`, an unreachable or failing backend raises
  :class:`~fabric.errors.BackendUnavailable`. Nothing answers ``[]`` or ``False`` to hide an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from fabric.errors import InvalidInput

IndexName = Literal["workflows", "executions", "logs"]
INDEX_NAMES: tuple[IndexName, ...] = ("workflows", "executions", "logs")

#: Longest id accepted: ids end up in URLs (Elasticsearch caps ``_id`` at 512 bytes).
MAX_ID_LENGTH = 512
#: Largest ``limit`` a search accepts; deeper pages are not what these calls are for.
MAX_LIMIT = 10_000

Document = dict[str, Any]

_WORD = re.compile(r"\w", re.UNICODE)


@runtime_checkable
class SearchService(Protocol):
    """The guide's search calls. See the module docstring for the rules every backend keeps."""

    backend: str

    def index_workflow(self, workflow_id: str, data: Mapping[str, Any]) -> str: ...

    def search_workflows(
        self, query: str, tags: Sequence[str] | None = None, limit: int = 10
    ) -> list[Document]: ...

    def index_execution(self, execution_id: str, execution_data: Mapping[str, Any]) -> str: ...

    def search_executions(
        self,
        workflow_id: str | None = None,
        status: str | None = None,
        date_range: Mapping[str, Any] | None = None,
        limit: int = 50,
    ) -> list[Document]: ...

    def index_log(self, entry: Mapping[str, Any]) -> str: ...

    def search_logs(
        self,
        query: str | None = None,
        level: str | None = None,
        service: str | None = None,
        execution_id: str | None = None,
        time_range: Mapping[str, Any] | None = None,
        limit: int = 100,
    ) -> list[Document]: ...

    def bulk_index_workflows(self, docs: Iterable[Mapping[str, Any]]) -> int: ...

    def bulk_index_executions(self, docs: Iterable[Mapping[str, Any]]) -> int: ...

    def bulk_index_logs(self, entries: Iterable[Mapping[str, Any]]) -> int: ...

    def delete_workflow(self, workflow_id: str) -> bool: ...

    def delete_execution(self, execution_id: str) -> bool: ...

    def count(self, index: str) -> int: ...

    def health_check(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# --- normalised documents -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowDoc:
    id: str
    name: str
    description: str
    tags: tuple[str, ...]
    source: Document  # what is stored and returned: the caller's data plus "id"


@dataclass(frozen=True, slots=True)
class ExecutionDoc:
    id: str
    workflow_id: str
    status: str
    started_us: int | None  # started_at as UTC microseconds since the epoch, for filters and ordering
    source: Document


@dataclass(frozen=True, slots=True)
class LogDoc:
    id: str
    timestamp_us: int
    level: str
    service: str | None
    execution_id: str | None
    message: str
    content_json: str  # canonical JSON of the entry without its id (the form the SQLite backend stores)

    @property
    def source(self) -> Document:
        """The stored document: the entry (level upper-cased, dates as ISO strings) plus its ``"id"``."""
        return {**json.loads(self.content_json), "id": self.id}


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable document id, else raise InvalidInput naming ``what``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH or "\x00" in value:
        raise InvalidInput(
            f"{what} must be at most {MAX_ID_LENGTH} characters without NUL, got {value[:60]!r}..."
        )
    return value


def check_limit(limit: object) -> int:
    """Return ``limit`` if it is an int in 1..MAX_LIMIT, else raise InvalidInput."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer between 1 and {MAX_LIMIT}, got {limit!r}")
    return limit


def check_optional_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string or None, got {value!r}")
    return value


def parse_time(value: object, what: str) -> int:
    """Parse an ISO-8601 string (or datetime) into UTC microseconds since the epoch.

    A time without a zone is taken as UTC, as Elasticsearch does. Raises InvalidInput naming ``what``.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(f"{what} must be an ISO-8601 date-time, got {value!r}") from None
    else:
        raise InvalidInput(f"{what} must be an ISO-8601 date-time string, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if micros < 0:
        raise InvalidInput(f"{what} must not be before 1970-01-01, got {value!r}")
    return micros


def format_time(micros: int) -> str:
    """UTC microseconds -> ISO-8601 with a ``Z`` (the form both backends compare on)."""
    moment = datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_range(value: Mapping[str, Any] | None, what: str) -> tuple[int | None, int | None]:
    """``{"from": iso, "to": iso}`` (either key optional, both inclusive) -> microsecond bounds."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a mapping like {{'from': iso, 'to': iso}}, got {value!r}")
    unknown = set(value) - {"from", "to"}
    if unknown:
        raise InvalidInput(f"{what} accepts only the keys 'from' and 'to', got {sorted(unknown)}")
    low = parse_time(value["from"], f"{what}['from']") if value.get("from") is not None else None
    high = parse_time(value["to"], f"{what}['to']") if value.get("to") is not None else None
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"{what}: 'from' ({value['from']}) is after 'to' ({value['to']})")
    return low, high


def _jsonable(data: Mapping[str, Any], what: str) -> Document:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a mapping, got {type(data).__name__}")
    try:
        # A round trip both proves the document is JSON and detaches it from the caller's objects.
        copied: Document = json.loads(json.dumps(dict(data), default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None
    return copied


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _text_field(source: Mapping[str, Any], key: str, what: str, *, required: bool) -> str:
    value = source.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidInput(
            f"{what}['{key}'] must be a {'non-empty ' if required else ''}string, got {value!r}"
        )
    return value


def normalize_workflow(workflow_id: object, data: Mapping[str, Any]) -> WorkflowDoc:
    """Validate a workflow for indexing: ``name`` (required), ``description`` and ``tags`` (list of str)."""
    wid = check_id(workflow_id, "workflow_id")
    source = _jsonable(data, f"workflow {wid!r}")
    if "id" in source and source["id"] != wid:
        raise InvalidInput(f"workflow data carries id {source['id']!r} but was indexed as {wid!r}")
    source["id"] = wid
    name = _text_field(source, "name", f"workflow {wid!r}", required=True)
    description = _text_field(source, "description", f"workflow {wid!r}", required=False)
    tags = source.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidInput(f"workflow {wid!r}: tags must be a list of non-empty strings, got {tags!r}")
    return WorkflowDoc(wid, name, description, tuple(dict.fromkeys(tags)), source)


def normalize_execution(execution_id: object, data: Mapping[str, Any]) -> ExecutionDoc:
    """Validate an execution: ``workflow_id``, ``status`` (required), ``started_at`` (ISO-8601, optional)."""
    eid = check_id(execution_id, "execution_id")
    source = _jsonable(data, f"execution {eid!r}")
    if "id" in source and source["id"] != eid:
        raise InvalidInput(f"execution data carries id {source['id']!r} but was indexed as {eid!r}")
    source["id"] = eid
    workflow_id = check_id(source.get("workflow_id"), f"execution {eid!r}: workflow_id")
    status = _text_field(source, "status", f"execution {eid!r}", required=True)
    started = source.get("started_at")
    started_us = None if started is None else parse_time(started, f"execution {eid!r}: started_at")
    if source.get("completed_at") is not None:
        parse_time(source["completed_at"], f"execution {eid!r}: completed_at")
    return ExecutionDoc(eid, workflow_id, status, started_us, source)


def _canonical(content: Mapping[str, Any], what: str) -> str:
    try:
        return _CANONICAL.encode(content)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None


# One encoder for every log: json.dumps with non-default options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default, allow_nan=False
)


def log_id(entry: Mapping[str, Any]) -> str:
    """A stable id for an entry without one: the hash of its content, so a redelivery is not a duplicate."""
    content = {k: v for k, v in entry.items() if k != "id"}
    return _log_id_from_canonical(_canonical(content, "log entry"))


def _log_id_from_canonical(canonical: str) -> str:
    return "log-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def normalize_log(entry: Mapping[str, Any]) -> LogDoc:
    """Validate a log entry: ``timestamp`` (ISO-8601), ``level``, ``message`` required; ``service``,
    ``execution_id`` and ``id`` optional; other keys are stored as they are. ``level`` is upper-cased."""
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"log entry must be a mapping, got {type(entry).__name__}")
    # Logs come by the hundred thousand: one canonical serialisation validates the entry, gives the
    # content-derived id and is the stored form (without the id, which has a column of its own).
    content = {k: v for k, v in entry.items() if k != "id"}
    timestamp_us = parse_time(content.get("timestamp"), "log entry['timestamp']")
    level = _text_field(content, "level", "log entry", required=True).upper()
    content["level"] = level
    message = _text_field(content, "message", "log entry", required=True)
    service = check_optional_str(content.get("service"), "log entry['service']")
    execution_id = check_optional_str(content.get("execution_id"), "log entry['execution_id']")
    content_json = _canonical(content, "log entry")
    given = entry.get("id")
    lid = check_id(given, "log entry['id']") if given is not None else _log_id_from_canonical(content_json)
    return LogDoc(lid, timestamp_us, level, service, execution_id, message, content_json)


def query_terms(query: str | None) -> list[str] | None:
    """Split a user query into the chunks that must all match; None means "no text condition".

    Chunks without a word character are dropped (both engines' tokenisers would drop them anyway). A
    query that had text but no searchable chunk returns ``[]``: it matches nothing, as in Elasticsearch.
    """
    if query is None:
        return None
    if not isinstance(query, str):
        raise InvalidInput(f"query must be a string, got {query!r}")
    # NUL ends a C string: FTS5 would see an unterminated quoted string. It is no word character anyway.
    query = query.replace("\x00", " ")
    if not query.strip():
        return None
    return [chunk for chunk in query.split() if _WORD.search(chunk)]


def check_tags(tags: Sequence[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidInput(f"tags must be a list of non-empty strings, got {tags!r}")
    return list(dict.fromkeys(tags))


def check_index(index: object) -> IndexName:
    for name in INDEX_NAMES:
        if index == name:
            return name
    raise InvalidInput(f"unknown search index {index!r}; expected one of {', '.join(INDEX_NAMES)}")


def split_bulk_id(doc: Mapping[str, Any], what: str) -> tuple[str, Mapping[str, Any]]:
    """Bulk forms take documents that carry their own ``"id"``."""
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{what} must be a mapping with an 'id', got {type(doc).__name__}")
    return check_id(doc.get("id"), f"{what}['id']"), doc
