"""What only the Elasticsearch adapter has: explicit mappings, index prefixes, API keys, 429/5xx retries and
an unreachable server, against osmem-server behind the header-rewriting proxy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from elasticsearch import Elasticsearch

from config import reload_settings
from fabric.errors import BackendUnavailable
from services.search import get_search_service, reset_search_service
from services.search.elasticsearch import ElasticsearchSearchService
from tests.support.opensearch import OsmemBehindProxy, rewrite_media_type
from tests.support.servers import free_port


def _logs(n: int, word: str = "entry") -> list[dict[str, object]]:
    return [
        {
            "timestamp": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "level": "INFO",
            "message": f"{word} {i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def raw_client(osmem: OsmemBehindProxy) -> Iterator[Elasticsearch]:
    client = Elasticsearch(osmem.url)
    yield client
    client.close()


def test_indices_get_explicit_mappings_with_disabled_payloads(
    es_search: ElasticsearchSearchService, raw_client: Elasticsearch
) -> None:
    es_search.index_execution(
        "ex", {"workflow_id": "wf", "status": "done", "input_data": {"a": 1}, "output_data": {"b": [1, 2]}}
    )
    es_search.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "hello"})
    es_search.index_workflow("wf", {"name": "Mailer", "steps": [{"x": 1}]})

    name = es_search.index_name("executions")
    assert name.startswith(es_search.index_prefix)
    mapping = raw_client.indices.get_mapping(index=name)[name]["mappings"]
    assert mapping["dynamic"] in (False, "false")
    assert mapping["properties"]["input_data"]["enabled"] is False
    assert mapping["properties"]["output_data"]["enabled"] is False
    assert mapping["properties"]["started_at"]["type"] == "date"
    for index in ("logs", "workflows"):
        props = raw_client.indices.get_mapping(index=es_search.index_name(index))[es_search.index_name(index)]
        assert "steps" not in props["mappings"]["properties"]  # unmapped fields stay unindexed


def test_payloads_that_would_conflict_under_dynamic_mapping_are_accepted(
    es_search: ElasticsearchSearchService,
) -> None:
    shapes: list[object] = [{"v": 1}, {"v": "text"}, {"v": {"deep": True}}, [1, 2], "plain", 3]
    docs = [
        {"id": f"e{i}", "workflow_id": "wf", "status": "done", "input_data": s} for i, s in enumerate(shapes)
    ]

    assert es_search.bulk_index_executions(docs) == len(shapes)
    stored = {r["id"]: r["input_data"] for r in es_search.search_executions(workflow_id="wf")}
    assert stored == {f"e{i}": s for i, s in enumerate(shapes)}


def test_bulk_retries_429_with_backoff(
    osmem: OsmemBehindProxy, es_search: ElasticsearchSearchService
) -> None:
    es_search.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "index exists"})
    assert osmem.proxy is not None
    osmem.proxy.fail_next(2, status=429, path_contains="_bulk")

    assert es_search.bulk_index_logs(_logs(50)) == 50
    assert es_search.count("logs") == 51


def test_persistent_503_raises_backend_unavailable(
    osmem: OsmemBehindProxy, es_search: ElasticsearchSearchService
) -> None:
    es_search.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "index exists"})
    assert osmem.proxy is not None
    osmem.proxy.fail_next(es_search.max_retries + 1, status=503, path_contains="_search")

    with pytest.raises(BackendUnavailable, match="503"):
        es_search.search_logs(query="index")
    assert [r["message"] for r in es_search.search_logs(query="index")] == ["index exists"]


def test_bulk_429_beyond_the_retries_raises_backend_unavailable(
    osmem: OsmemBehindProxy, es_search: ElasticsearchSearchService
) -> None:
    es_search.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "index exists"})
    assert osmem.proxy is not None
    # The transport retries the request max_retries times, and the bulk helper retries the chunk as often.
    osmem.proxy.fail_next((es_search.max_retries + 1) ** 2 + 2, status=429, path_contains="_bulk")

    with pytest.raises(BackendUnavailable):
        es_search.bulk_index_logs(_logs(5))
    osmem.proxy.clear_faults()


def test_unreachable_server_raises_backend_unavailable() -> None:
    service = ElasticsearchSearchService(
        f"http://127.0.0.1:{free_port()}", max_retries=1, initial_backoff=0.01
    )

    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1"):
        service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "lost"})
    health = service.health_check()
    assert health["status"] == "unhealthy"
    assert health["backend"] == "elasticsearch"
    service.close()


def test_api_key_is_sent(osmem: OsmemBehindProxy) -> None:
    service = ElasticsearchSearchService(
        osmem.url, api_key="c2VjcmV0", index_prefix=f"t{uuid.uuid4().hex[:8]}-"
    )
    assert osmem.proxy is not None
    service.health_check()

    assert osmem.proxy.last_headers.get("authorization") == "ApiKey c2VjcmV0"
    service.close()


def test_factory_builds_the_adapter_from_settings(
    osmem: OsmemBehindProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("SEARCH_BACKEND", "elasticsearch")
    monkeypatch.setenv("ELASTICSEARCH_URL", osmem.url)
    monkeypatch.setenv("ELASTICSEARCH_INDEX_PREFIX", prefix)
    reload_settings()
    reset_search_service()
    try:
        service = get_search_service()
        assert isinstance(service, ElasticsearchSearchService)
        assert service.index_name("logs") == f"{prefix}logs"
        service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "via factory"})
        assert [r["message"] for r in service.search_logs(query="factory")] == ["via factory"]
        service.delete_indices()
    finally:
        reset_search_service()
        monkeypatch.undo()
        reload_settings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("application/vnd.elasticsearch+json; compatible-with=9", "application/json"),
        ("application/vnd.elasticsearch+x-ndjson; compatible-with=8", "application/x-ndjson"),
        ("application/json", "application/json"),
    ],
)
def test_proxy_rewrites_compatible_with_media_types(given: str, expected: str) -> None:
    assert rewrite_media_type(given) == expected
