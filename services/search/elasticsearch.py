"""The production search backend: Elasticsearch through the official ``elasticsearch`` client.

- Indices ``<ELASTICSEARCH_INDEX_PREFIX>workflows|executions|logs`` are created on first use with explicit
  mappings and ``"dynamic": false``: fields we do not map are kept in ``_source`` but never indexed, and the
  payloads (``input_data``, ``output_data``) are ``"enabled": false`` objects, so no payload can cause a
  mapping conflict or a mapping explosion.
- Single writes use ``refresh="wait_for"``; bulk writes go through ``helpers.streaming_bulk`` (retrying 429
  with exponential backoff) and refresh the index once at the end. Either way a document is searchable when
  the call returns.
- Text queries: each whitespace-separated chunk of the query is a ``match_phrase`` (as each chunk is a quoted
  string in FTS5), all chunks required, so query syntax in user input is just text.
- Errors: connection failures, timeouts, 429 and 5xx raise BackendUnavailable (after the client's retries);
  401/403 raise ConfigurationError; other 4xx raise InvalidInput. Every call goes through the server's
  circuit breaker (:mod:`services.resilience`): while it is open, calls raise CircuitOpen at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import elastic_transport
from elasticsearch import ApiError, Elasticsearch, helpers

from fabric.errors import AppError, BackendUnavailable, ConfigurationError, InvalidInput
from services.resilience import guarded
from services.search.base import (
    INDEX_NAMES,
    Document,
    IndexName,
    check_id,
    check_index,
    check_limit,
    check_optional_str,
    check_tags,
    format_time,
    normalize_execution,
    normalize_log,
    normalize_workflow,
    parse_range,
    query_terms,
    split_bulk_id,
)

T = TypeVar("T")

NAME_BOOST = 3
_DISABLED = {"type": "object", "enabled": False}

MAPPINGS: dict[IndexName, dict[str, Any]] = {
    "workflows": {
        "dynamic": False,
        "properties": {
            "id": {"type": "keyword"},
            "name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
            "description": {"type": "text"},
            "tags": {"type": "keyword"},
        },
    },
    "executions": {
        "dynamic": False,
        "properties": {
            "id": {"type": "keyword"},
            "workflow_id": {"type": "keyword"},
            "status": {"type": "keyword"},
            "started_at": {"type": "date"},
            "completed_at": {"type": "date"},
            "error_message": {"type": "text"},
            "input_data": _DISABLED,
            "output_data": _DISABLED,
        },
    },
    "logs": {
        "dynamic": False,
        "properties": {
            "id": {"type": "keyword"},
            "timestamp": {"type": "date"},
            "level": {"type": "keyword"},
            "service": {"type": "keyword"},
            "execution_id": {"type": "keyword"},
            "message": {"type": "text"},
        },
    },
}


class ElasticsearchSearchService:
    """The guide's search service on Elasticsearch. Thread-safe (the client is); build one per process.

    Takes the server URL, an optional API key, the index-name prefix and the retry/timeout knobs. Builds no
    connection until the first call.
    """

    backend = "elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        index_prefix: str = "",
        request_timeout: float = 10.0,
        max_retries: int = 3,
        initial_backoff: float = 0.5,
        chunk_size: int = 1000,
        client: Elasticsearch | None = None,
    ) -> None:
        self.url = url
        self.index_prefix = index_prefix
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.chunk_size = chunk_size
        self._api_key = api_key
        self._request_timeout = request_timeout
        self._client = client
        self._ready: set[IndexName] = set()
        self._lock = threading.Lock()

    @property
    def client(self) -> Elasticsearch:
        with self._lock:
            if self._client is None:
                self._client = Elasticsearch(
                    self.url,
                    api_key=self._api_key,
                    request_timeout=self._request_timeout,
                    max_retries=self.max_retries,
                    retry_on_status=(429, 502, 503, 504),
                    retry_on_timeout=True,
                    retry_backoff_base=self.initial_backoff,
                    retry_backoff_cap=max(self.initial_backoff, 30.0),
                )
            return self._client

    def index_name(self, index: IndexName) -> str:
        return self.index_prefix + index

    # --- plumbing ---------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call through this server's circuit breaker (shared by every process through
        Redis: a dead cluster is noticed once and calls fail fast with CircuitOpen while it is down),
        turning the client's exceptions into the project's error tree."""
        return guarded(f"elasticsearch@{self.url}", lambda: self._translate(what, fn))

    def _translate(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except AppError:
            raise
        except ApiError as exc:
            raise _api_error(what, exc.meta.status, exc) from exc
        except elastic_transport.TransportError as exc:  # connection refused, timeout, TLS
            raise BackendUnavailable(f"Elasticsearch at {self.url}: {what} failed: {exc}") from exc

    def _ensure(self, index: IndexName) -> str:
        """Create the index with its mapping on first use (once per process; a concurrent create is fine)."""
        name = self.index_name(index)
        if index in self._ready:
            return name

        def create() -> None:
            client = self.client
            if client.indices.exists(index=name):
                return
            try:
                client.indices.create(index=name, mappings=MAPPINGS[index])
            except ApiError as exc:
                if exc.meta.status == 400 and "already_exists" in str(exc):
                    return  # another process created it between our check and our create
                raise

        self._call(f"create index {name}", create)
        self._ready.add(index)
        return name

    def _put(self, index: IndexName, doc_id: str, source: Document) -> str:
        name = self._ensure(index)
        self._call(
            f"index {doc_id!r} into {name}",
            lambda: self.client.index(index=name, id=doc_id, document=source, refresh="wait_for"),
        )
        return doc_id

    def _bulk(self, index: IndexName, docs: Sequence[tuple[str, Document]]) -> int:
        if not docs:
            return 0
        name = self._ensure(index)
        actions = ({"_op_type": "index", "_index": name, "_id": i, "_source": s} for i, s in docs)

        def run() -> int:
            written = 0
            failures: list[dict[str, Any]] = []
            for ok, item in helpers.streaming_bulk(
                self.client,
                actions,
                chunk_size=self.chunk_size,
                max_retries=self.max_retries,
                initial_backoff=self.initial_backoff,
                max_backoff=30.0,
                raise_on_error=False,
                yield_ok=True,
            ):
                if ok:
                    written += 1
                else:
                    failures.append(item)
            if failures:
                raise _bulk_error(name, failures)
            self.client.indices.refresh(index=name)
            return written

        return self._call(f"bulk index into {name}", run)

    def _search(self, index: IndexName, body: dict[str, Any], *, scored: bool) -> list[Document]:
        name = self._ensure(index)
        response = self._call(f"search {name}", lambda: self.client.search(index=name, **body))
        results: list[Document] = []
        for hit in response["hits"]["hits"]:
            doc: Document = dict(hit["_source"])
            doc["id"] = hit["_id"]
            if scored:
                doc["score"] = hit.get("_score")
            results.append(doc)
        return results

    def _delete(self, index: IndexName, doc_id: str) -> bool:
        name = self._ensure(index)

        def delete() -> bool:
            try:
                self.client.delete(index=name, id=doc_id, refresh="wait_for")
            except ApiError as exc:
                if exc.meta.status == 404:
                    return False
                raise
            return True

        return self._call(f"delete {doc_id!r} from {name}", delete)

    # --- workflows --------------------------------------------------------------------------------

    def index_workflow(self, workflow_id: str, data: Mapping[str, Any]) -> str:
        """Upsert one workflow (``name`` required; ``description``, ``tags``). Returns the id.
        Raises InvalidInput, BackendUnavailable."""
        doc = normalize_workflow(workflow_id, data)
        return self._put("workflows", doc.id, doc.source)

    def bulk_index_workflows(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Upsert workflows carrying their own ``"id"``. Returns how many were written."""
        normalized = [normalize_workflow(*split_bulk_id(d, "workflow")) for d in docs]
        return self._bulk("workflows", [(d.id, d.source) for d in normalized])

    def search_workflows(
        self, query: str, tags: Sequence[str] | None = None, limit: int = 10
    ) -> list[Document]:
        """Workflows matching every word of ``query`` in name or description, best first (name boosted),
        having all of ``tags``. An empty query lists workflows by name.

        Raises InvalidInput, BackendUnavailable.
        """
        terms = query_terms(query)
        filters: list[dict[str, Any]] = [{"term": {"tags": tag}} for tag in check_tags(tags)]
        limit = check_limit(limit)
        if terms == []:
            return []
        if terms is None:
            body = {
                "query": {"bool": {"filter": filters}},
                "sort": [{"name.raw": "asc"}, {"id": "asc"}],
                "size": limit,
            }
            return self._search("workflows", body, scored=False)
        must = [
            {"multi_match": {"query": t, "type": "phrase", "fields": [f"name^{NAME_BOOST}", "description"]}}
            for t in terms
        ]
        body = {
            "query": {"bool": {"must": must, "filter": filters}},
            "sort": [{"_score": "desc"}, {"id": "asc"}],
            "size": limit,
        }
        return self._search("workflows", body, scored=True)

    def delete_workflow(self, workflow_id: str) -> bool:
        """Remove a workflow from the index. Returns whether it was there."""
        return self._delete("workflows", check_id(workflow_id, "workflow_id"))

    # --- executions -------------------------------------------------------------------------------

    def index_execution(self, execution_id: str, execution_data: Mapping[str, Any]) -> str:
        """Upsert one execution (``workflow_id``, ``status`` required; ``started_at`` ISO-8601).

        Returns the id. Raises InvalidInput, BackendUnavailable."""
        doc = normalize_execution(execution_id, execution_data)
        return self._put("executions", doc.id, doc.source)

    def bulk_index_executions(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Upsert executions carrying their own ``"id"``. Returns how many were written."""
        normalized = [normalize_execution(*split_bulk_id(d, "execution")) for d in docs]
        return self._bulk("executions", [(d.id, d.source) for d in normalized])

    def search_executions(
        self,
        workflow_id: str | None = None,
        status: str | None = None,
        date_range: Mapping[str, Any] | None = None,
        limit: int = 50,
    ) -> list[Document]:
        """Executions matching every filter, newest ``started_at`` first; ``date_range`` is
        ``{"from": iso, "to": iso}`` (inclusive). Raises InvalidInput, BackendUnavailable."""
        filters: list[dict[str, Any]] = []
        if check_optional_str(workflow_id, "workflow_id") is not None:
            filters.append({"term": {"workflow_id": workflow_id}})
        if check_optional_str(status, "status") is not None:
            filters.append({"term": {"status": status}})
        filters += _range("started_at", *parse_range(date_range, "date_range"))
        body = {
            "query": {"bool": {"filter": filters}},
            "sort": [{"started_at": {"order": "desc", "missing": "_last"}}, {"id": "desc"}],
            "size": check_limit(limit),
        }
        return self._search("executions", body, scored=False)

    def delete_execution(self, execution_id: str) -> bool:
        """Remove an execution from the index. Returns whether it was there."""
        return self._delete("executions", check_id(execution_id, "execution_id"))

    # --- logs -------------------------------------------------------------------------------------

    def index_log(self, entry: Mapping[str, Any]) -> str:
        """Upsert one log entry; without an ``id`` the id is derived from the content. Returns the id."""
        doc = normalize_log(entry)
        return self._put("logs", doc.id, doc.source)

    def bulk_index_logs(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Upsert many log entries. Returns how many were written. Invalid entries raise before any write."""
        docs = [normalize_log(e) for e in entries]
        return self._bulk("logs", [(d.id, d.source) for d in docs])

    def search_logs(
        self,
        query: str | None = None,
        level: str | None = None,
        service: str | None = None,
        execution_id: str | None = None,
        time_range: Mapping[str, Any] | None = None,
        limit: int = 100,
    ) -> list[Document]:
        """Log entries matching every condition, newest first (no ``score``: the order is by time, as on the
        SQLite backend). Raises InvalidInput, BackendUnavailable."""
        terms = query_terms(query)
        limit = check_limit(limit)
        filters: list[dict[str, Any]] = []
        level_value = check_optional_str(level, "level")
        if level_value is not None:
            filters.append({"term": {"level": level_value.upper()}})
        if check_optional_str(service, "service") is not None:
            filters.append({"term": {"service": service}})
        if check_optional_str(execution_id, "execution_id") is not None:
            filters.append({"term": {"execution_id": execution_id}})
        filters += _range("timestamp", *parse_range(time_range, "time_range"))
        if terms == []:
            return []
        must = [{"match_phrase": {"message": t}} for t in terms or []]
        body = {
            "query": {"bool": {"must": must, "filter": filters}},
            "sort": [{"timestamp": "desc"}, {"id": "desc"}],
            "size": limit,
        }
        return self._search("logs", body, scored=False)

    # --- common -----------------------------------------------------------------------------------

    def count(self, index: str) -> int:
        """How many documents ``index`` ("workflows", "executions" or "logs") holds."""
        name = self._ensure(check_index(index))
        return int(self._call(f"count {name}", lambda: self.client.count(index=name))["count"])

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy", "backend": "elasticsearch", "url", "version"}``, or status "unhealthy"
        with the ``error``."""
        try:
            info = self._call("info", self.client.info)
        except (BackendUnavailable, ConfigurationError, InvalidInput) as exc:
            return {"status": "unhealthy", "backend": self.backend, "url": self.url, "error": str(exc)}
        version = info.get("version", {}).get("number")
        return {"status": "healthy", "backend": self.backend, "url": self.url, "version": version}

    def delete_indices(self) -> None:
        """Drop this prefix's indices (tests, ``reindex`` from scratch)."""
        names = ",".join(self.index_name(i) for i in INDEX_NAMES)
        self._call(
            f"delete {names}",
            lambda: self.client.indices.delete(index=names, ignore_unavailable=True, allow_no_indices=True),
        )
        self._ready.clear()

    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        self._ready.clear()


def _range(field: str, low: int | None, high: int | None) -> list[dict[str, Any]]:
    bounds: dict[str, str] = {}
    if low is not None:
        bounds["gte"] = format_time(low)
    if high is not None:
        bounds["lte"] = format_time(high)
    return [{"range": {field: bounds}}] if bounds else []


def _api_error(what: str, status: int, exc: BaseException) -> AppError:
    if status == 429 or status >= 500:
        return BackendUnavailable(f"Elasticsearch: {what} failed with {status}: {exc}")
    if status in (401, 403):
        return ConfigurationError(
            f"Elasticsearch refused {what} ({status}): check ELASTICSEARCH_API_KEY: {exc}"
        )
    return InvalidInput(f"Elasticsearch rejected {what} ({status}): {exc}")


def _bulk_error(index: str, failures: list[dict[str, Any]]) -> AppError:
    statuses = sorted({int(next(iter(f.values())).get("status", 0)) for f in failures})
    first = next(iter(failures[0].values()))
    detail = f"{len(failures)} documents failed in {index} (statuses {statuses}); first: {first.get('error')}"
    if all(400 <= s < 500 and s != 429 for s in statuses):
        return InvalidInput(f"Elasticsearch rejected documents: {detail}")
    return BackendUnavailable(f"Elasticsearch bulk failed after retries: {detail}")
