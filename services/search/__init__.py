"""The guide's search service: ``get_search_service()`` returns this process's backend.

``SEARCH_BACKEND=sqlite`` (default): SQLite FTS5 at ``DATA_DIR/search/search.db``, no server.
``SEARCH_BACKEND=elasticsearch``: the official client against ``ELASTICSEARCH_URL``.
"""

from __future__ import annotations

from config import get_settings
from fabric.registry import PerProcess
from services.search.base import Document, SearchService

__all__ = ["Document", "SearchService", "get_search_service", "reset_search_service"]


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


_service: PerProcess[SearchService] = PerProcess("search service", _build)


def get_search_service() -> SearchService:
    """The search service of this process, built on first use from the settings (a forked child builds
    its own, see :mod:`fabric.registry`). Opens no connection itself."""
    return _service.get()


def reset_search_service() -> None:
    """Close and forget the process's service (tests, settings reload); the next call builds a new one."""
    _service.reset()
