"""Search fixtures: ``search`` runs a test once per backend (SQLite FTS5, and the Elasticsearch adapter
against a session-wide osmem-server behind the header-rewriting proxy), each on an empty index."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.search.base import SearchService
from services.search.elasticsearch import ElasticsearchSearchService
from services.search.sqlite import SqliteSearchService
from tests.support.opensearch import OsmemBehindProxy, osmem

__all__ = ["osmem"]


@pytest.fixture
def sqlite_search(tmp_path: Path) -> Iterator[SqliteSearchService]:
    service = SqliteSearchService(tmp_path / "search" / "search.db", busy_timeout=30)
    yield service
    service.close()


@pytest.fixture
def es_search(osmem: OsmemBehindProxy) -> Iterator[ElasticsearchSearchService]:
    # A prefix per test gives each test empty indices on the shared server.
    service = ElasticsearchSearchService(
        osmem.url, index_prefix=f"t{uuid.uuid4().hex[:10]}-", initial_backoff=0.05
    )
    yield service
    service.delete_indices()
    service.close()


@pytest.fixture(params=["sqlite", "elasticsearch"])
def search(request: pytest.FixtureRequest) -> SearchService:
    fixture = "sqlite_search" if request.param == "sqlite" else "es_search"
    service: SearchService = request.getfixturevalue(fixture)
    return service
