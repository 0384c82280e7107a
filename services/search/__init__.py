"""The guide's search service: ``get_search_service()`` returns this process's backend.

``SEARCH_BACKEND=sqlite`` (default): SQLite FTS5 at ``DATA_DIR/search/search.db``, no server.
``SEARCH_BACKEND=elasticsearch``: the official client against ``ELASTICSEARCH_URL``.
"""

from __future__ import annotations

import os
import threading

from config import get_settings
from services.search.base import Document, SearchService

__all__ = ["Document", "SearchService", "get_search_service", "reset_search_service"]

_lock = threading.Lock()
_service: SearchService | None = None
_service_pid: int | None = None


def _build() -> SearchService:
    settings = get_settings()
    if settings.search_backend == "elasticsearch":
        from services.search.elasticsearch import ElasticsearchSearchService

        api_key = settings.elasticsearch_api_key
        return ElasticsearchSearchService(
            settings.elasticsearch_url,
            api_key=api_key.get_secret_value() if api_key is not None else None,
            index_prefix=settings.elasticsearch_index_prefix,
            request_timeout=settings.elasticsearch_timeout,
            max_retries=settings.elasticsearch_max_retries,
            initial_backoff=settings.elasticsearch_initial_backoff,
            chunk_size=settings.elasticsearch_bulk_chunk_size,
        )
    from services.search.sqlite import SqliteSearchService

    return SqliteSearchService(
        settings.data_dir / "search" / "search.db", busy_timeout=settings.search_busy_timeout
    )


def get_search_service() -> SearchService:
    """The search service of this process, built on first use from the settings (a forked child builds
    its own, so no connection is shared across processes). Opens no connection itself."""
    global _service, _service_pid  # noqa: PLW0603 - the per-process cache is the point
    with _lock:
        if _service is None or _service_pid != os.getpid():
            _service = _build()
            _service_pid = os.getpid()
        return _service


def reset_search_service() -> None:
    """Close and forget the cached service (tests, settings reload); the next call builds a new one."""
    global _service, _service_pid  # noqa: PLW0603
    with _lock:
        if _service is not None and _service_pid == os.getpid():
            _service.close()
        _service = None
        _service_pid = None
