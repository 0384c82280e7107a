"""The Weaviate adapter beyond the contract: schema, deterministic UUIDs, batch errors, outages, auth.

Every test runs the real ``weaviate-client`` over loopback against ``tests/support/weaviate_server.py`` (a
protocol stand-in: Weaviate's REST and gRPC API in memory). No real Weaviate runs here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import weaviate
from weaviate.util import generate_uuid5

from config import reload_settings
from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput
from services.embeddings.base import Embedder
from services.vectors.weaviate_backend import (
    WeaviateBatchError,
    WeaviateVectorService,
    object_uuid,
    weaviate_class_name,
)
from tests.support.weaviate_server import WeaviateStandIn, point_version_check_at


@pytest.fixture
def service(weaviate_server: WeaviateStandIn, embedder: Embedder) -> Iterator[WeaviateVectorService]:
    made = WeaviateVectorService(embedder=embedder)
    yield made
    made.close()


def rest(server: WeaviateStandIn) -> httpx.Client:
    return httpx.Client(base_url=server.http_url, timeout=5)


def test_collection_names_map_to_capitalised_classes() -> None:
    assert weaviate_class_name("workflows") == "Workflows"
    assert weaviate_class_name("exec_logs_2") == "Exec_logs_2"


def test_the_client_connects_as_to_a_server(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    assert service.health_check() == {"status": "healthy", "backend": "weaviate"}
    # What connect_to_custom did on the wire: no OIDC, meta (version), gRPC health, readiness.
    for call in ("REST GET /v1/.well-known/openid-configuration", "REST GET /v1/meta", "gRPC Health/Check",
                 "REST GET /v1/.well-known/ready"):  # fmt: skip
        assert weaviate_server.calls[call] >= 1, (call, weaviate_server.calls)
    assert weaviate_server.calls["REST GET /pypi/weaviate-client/json"] == 1  # its version lookup, kept local


def test_collection_schema_brings_its_own_vectors(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn, embedder: Embedder
) -> None:
    service.store_vector("workflows", "Send invoice reminders", {"tags": ["billing"]}, vector_id="wf-1")
    with rest(weaviate_server) as http:
        schema = http.get("/v1/schema/Workflows").json()
    assert schema["class"] == "Workflows"
    default = schema["vectorConfig"]["default"]
    assert default["vectorizer"] == {"none": {}} and default["vectorIndexType"] == "hnsw"
    assert default["vectorIndexConfig"]["distance"] == "cosine"
    props = {p["name"]: p for p in schema["properties"]}
    assert (
        props["filter_terms"]["dataType"] == ["text[]"] and props["filter_terms"]["tokenization"] == "field"
    )
    assert props["text"]["indexFilterable"] is False
    assert f"dimension={embedder.dimension}" in schema["description"]
    assert f'model="{embedder.model_name}"' in schema["description"]


def test_uuids_are_deterministic_so_redelivery_is_idempotent(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    expected = generate_uuid5("wf-1", "workflows/")
    assert object_uuid("workflows", "wf-1") == expected
    for _ in range(3):
        service.store_vector("workflows", "Send invoice reminders", {"attempt": 1}, vector_id="wf-1")
    with rest(weaviate_server) as http:
        assert http.head(f"/v1/objects/Workflows/{expected}").status_code == 204
    assert weaviate_server.object_count("workflows") == 1 == service.count("workflows")
    # Same id, other collection: another object.
    assert object_uuid("workflows2", "wf-1") != expected
    assert object_uuid("a", "bc") != object_uuid("ab", "c")


def test_every_failed_object_of_a_batch_is_raised(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    refused = {object_uuid("workflows", "wf-3"), object_uuid("workflows", "wf-7")}
    weaviate_server.object_error = lambda cls, key, props: (
        "invalid property value" if str(key) in refused else None
    )
    items = [{"id": f"wf-{n}", "text": f"workflow {n} posts reports"} for n in range(10)]
    with pytest.raises(WeaviateBatchError, match=r"2 objects.*'wf-3': invalid property value; 'wf-7'"):
        service.store_vectors("workflows", items)
    assert service.count("workflows") == 8  # the others were stored, as Weaviate does


def test_a_batch_failing_entirely_is_raised(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    weaviate_server.object_error = lambda cls, key, props: "disk full"
    with pytest.raises(WeaviateBatchError, match=r"all 3 objects.*disk full"):
        service.store_vectors("workflows", [{"text": f"workflow {n}"} for n in range(3)])


def test_transient_batch_failures_are_retryable(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    weaviate_server.object_error = lambda cls, key, props: (
        "context deadline exceeded" if props["vector_id"] == "b" else None
    )
    with pytest.raises(BackendUnavailable, match="'b': context deadline exceeded"):
        service.store_vectors("workflows", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}])


def test_large_batches_are_sent_in_chunks(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    rng = np.random.default_rng(0)
    dimension = service.embedder.dimension
    vectors = rng.normal(size=(2500, dimension))
    ids = service.store_vectors(
        "bulk", [{"id": f"v{n}", "text": f"item {n}", "vector": v.tolist()} for n, v in enumerate(vectors)]
    )
    assert len(ids) == 2500 and service.count("bulk") == 2500
    assert weaviate_server.calls["gRPC BatchObjects"] == 3
    nearest = service.client.collections.get("Bulk").query.near_vector(
        vectors[1234].tolist(), limit=1, target_vector="default"
    )
    assert nearest.objects[0].properties["vector_id"] == "v1234"


def test_server_down_is_a_transient_error(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    own = WeaviateStandIn().start()  # its own server: this test takes it down
    point_version_check_at(monkeypatch, own)
    monkeypatch.setenv("WEAVIATE_URL", own.http_url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(own.grpc_port))
    monkeypatch.setenv("CIRCUIT_BREAKER_ENABLED", "false")  # each call must reach the (dead) server
    reload_settings()
    service = WeaviateVectorService(embedder=embedder)
    try:
        service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
        own.stop()
        with pytest.raises(BackendUnavailable):
            service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
        with pytest.raises(BackendUnavailable):
            service.search_similar("workflows", "invoices")
        with pytest.raises(BackendUnavailable):
            service.count("workflows")
        assert service.health_check()["status"] == "unhealthy"
        own.start()  # the same ports again: a restart, data kept
        assert service.search_similar("workflows", "Send invoice reminders")[0]["id"] == "wf-1"
    finally:
        service.close()
        own.stop()
        monkeypatch.undo()
        reload_settings()


def test_not_ready_is_unhealthy(service: WeaviateVectorService, weaviate_server: WeaviateStandIn) -> None:
    assert service.health_check()["status"] == "healthy"
    weaviate_server.ready = False
    assert service.health_check() == {
        "status": "unhealthy",
        "backend": "weaviate",
        "error": "Weaviate is not ready",
    }


def test_a_foreign_collection_is_not_used(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    with rest(weaviate_server) as http:
        created = http.post(
            "/v1/schema",
            json={
                "class": "Workflows",
                "properties": [{"name": "title", "dataType": ["text"]}],
                "vectorConfig": {"default": {"vectorizer": {"none": {}}, "vectorIndexType": "hnsw"}},
            },
        )
    assert created.status_code == 200, created.text
    with pytest.raises(ConfigurationError, match=r"Workflows.*no dimension"):
        service.store_vector("workflows", "Send invoice reminders", {})


def test_a_bad_schema_is_answered_422_and_refused(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn
) -> None:
    from weaviate.classes.config import Configure, DataType, Property, Tokenization

    with (
        pytest.raises(InvalidInput, match=r"422.*Tokenization is not allowed"),
        service._errors("creating X"),
    ):
        service.client.collections.create(
            "Things",
            properties=[Property(name="n", data_type=DataType.INT, tokenization=Tokenization.FIELD)],
            vector_config=Configure.Vectors.self_provided(),
        )
    with pytest.raises(InvalidInput, match=r"422.*no module with name"), service._errors("creating X"):
        service.client.collections.create("Things", vector_config=Configure.Vectors.text2vec_openai())
    with rest(weaviate_server) as http:
        bad_name = http.post("/v1/schema", json={"class": "bad-name", "vectorConfig": {}})
    assert bad_name.status_code == 422 and "not a valid class name" in bad_name.json()["error"][0]["message"]
    assert not service.client.collections.exists("Things")


def test_a_collection_created_by_another_worker_is_reused(
    weaviate_server: WeaviateStandIn, embedder: Embedder
) -> None:
    first = WeaviateVectorService(embedder=embedder)
    second = WeaviateVectorService(embedder=embedder)
    try:
        assert second.collection_info("workflows") is None  # second has looked: no collection yet
        first.store_vector("workflows", "one", {}, vector_id="a")
        second.store_vector("workflows", "two", {}, vector_id="b")
        assert first.count("workflows") == 2
    finally:
        first.close()
        second.close()


def test_lost_creation_race_is_tolerated(
    service: WeaviateVectorService, weaviate_server: WeaviateStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    collections = service.client.collections
    real_create = collections.create

    def create_twice(name: str, **kwargs: object) -> object:
        real_create(name, **kwargs)  # another worker wins the race ...
        return real_create(name, **kwargs)  # ... and ours is answered 422 by the server

    monkeypatch.setattr(collections, "create", create_twice)
    service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
    assert service.count("workflows") == 1
    assert weaviate_server.calls["REST POST /v1/schema"] == 2


def test_scores_equal_the_embedded_engine(
    service: WeaviateVectorService, tmp_path: Path, embedder: Embedder
) -> None:
    from services.vectors.embedded import EmbeddedVectorService

    embedded = EmbeddedVectorService(path=tmp_path / "v.db", embedder=embedder)
    items = [
        {"id": f"w{n}", "text": t}
        for n, t in enumerate(["pay invoices", "hire people", "backup databases", "send slack digests"])
    ]
    service.store_vectors("workflows", items)
    embedded.store_vectors("workflows", items)
    a = service.search_similar("workflows", "invoices to pay", limit=4, score_threshold=-1)
    b = embedded.search_similar("workflows", "invoices to pay", limit=4, score_threshold=-1)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


def test_client_is_built_lazily_from_settings(weaviate_server: WeaviateStandIn, embedder: Embedder) -> None:
    service = WeaviateVectorService(embedder=embedder)
    assert service._client is None and weaviate_server.calls["REST GET /v1/meta"] == 0
    assert service.count("workflows") == 0
    assert weaviate_server.calls["REST GET /v1/meta"] == 1
    assert service.client.is_connected()
    service.close()
    assert service._client is None


def test_an_api_key_is_sent_and_a_wrong_one_is_a_configuration_error(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = WeaviateStandIn(api_key="right-key").start()
    point_version_check_at(monkeypatch, own)
    monkeypatch.setenv("WEAVIATE_URL", own.http_url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(own.grpc_port))
    try:
        monkeypatch.setenv("WEAVIATE_API_KEY", "right-key")
        reload_settings()
        good = WeaviateVectorService(embedder=embedder)
        good.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")  # REST and gRPC
        assert good.search_similar("workflows", "Send invoice reminders")[0]["id"] == "wf-1"
        good.close()
        monkeypatch.setenv("WEAVIATE_API_KEY", "wrong-key")
        reload_settings()
        bad = WeaviateVectorService(embedder=embedder)
        with pytest.raises(ConfigurationError, match=r"401.*WEAVIATE_API_KEY"):
            bad.count("workflows")
        bad.close()
    finally:
        own.stop()
        monkeypatch.undo()
        reload_settings()


def test_a_server_too_old_for_the_client_is_a_configuration_error(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deploy/compose.yaml pins Weaviate 1.26.1; weaviate-client 4.x refuses servers older than 1.27.
    own = WeaviateStandIn(version="1.26.1").start()
    point_version_check_at(monkeypatch, own)
    monkeypatch.setenv("WEAVIATE_URL", own.http_url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(own.grpc_port))
    reload_settings()
    try:
        with pytest.raises(ConfigurationError, match=r"too old.*1\.26\.1"):
            WeaviateVectorService(embedder=embedder).count("workflows")
    finally:
        own.stop()
        monkeypatch.undo()
        reload_settings()


def test_stand_in_reproduces_weaviate_semantics(weaviate_server: WeaviateStandIn) -> None:
    """Self-checks of the stand-in through the real client, so the adapter's tests mean something."""
    import uuid

    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.data import DataObject
    from weaviate.classes.query import Filter, MetadataQuery
    from weaviate.exceptions import WeaviateInsertManyAllFailedError, WeaviateQueryError

    client = weaviate.connect_to_custom(
        http_host="127.0.0.1", http_port=weaviate_server.http_port, http_secure=False,
        grpc_host="127.0.0.1", grpc_port=weaviate_server.grpc_port, grpc_secure=False,
    )  # fmt: skip
    weaviate_server.auto_schema = False
    try:
        handle = client.collections.create(
            "things",
            properties=[
                Property(name="words", data_type=DataType.TEXT_ARRAY),  # default word tokenization
                Property(name="hidden", data_type=DataType.TEXT, index_filterable=False),
            ],
            vector_config=Configure.Vectors.self_provided(name="default"),
        )
        assert handle.name == "Things" and client.collections.exists("things")
        a, b = uuid.uuid4(), uuid.uuid4()
        result = handle.data.insert_many(
            [
                DataObject(uuid=a, properties={"words": ["billing-ops"]}, vector={"default": [1.0, 0.0]}),
                DataObject(uuid=b, properties={"words": ["hr"]}, vector={"default": [3.0, 4.0]}),
                DataObject(properties={"words": ["x"]}, vector={"default": [1.0, 0.0, 0.0]}),
                DataObject(properties={"nope": "x"}, vector={"default": [1.0, 0.0]}),
            ]
        )
        assert set(result.uuids) == {0, 1} and set(result.errors) == {2, 3}
        assert "length 3" in result.errors[2].message and "no such prop" in result.errors[3].message
        with pytest.raises(WeaviateInsertManyAllFailedError):
            handle.data.insert_many([DataObject(properties={"nope": 1}, vector={"default": [1.0, 0.0]})])
        found = handle.query.near_vector(
            [1.0, 0.0], return_metadata=MetadataQuery(distance=True, certainty=True)
        )
        assert [o.uuid for o in found.objects] == [a, b]
        assert found.objects[1].metadata.distance == pytest.approx(1 - 0.6)
        assert found.objects[1].metadata.certainty == pytest.approx(1 - 0.4 / 2)
        # Word tokenization splits "billing-ops": a whole-value filter needs field tokenization.
        by_word = handle.query.near_vector([1.0, 0.0], filters=Filter.by_property("words").equal("billing"))
        assert [o.uuid for o in by_word.objects] == [a]
        with pytest.raises(WeaviateQueryError, match="indexFilterable"):
            handle.query.near_vector([1.0, 0.0], filters=Filter.by_property("hidden").equal("x"))
        assert [o.uuid for o in handle.query.near_vector([1.0, 0.0], distance=0.1).objects] == [a]
        assert [o.uuid for o in handle.query.near_vector([1.0, 0.0], certainty=0.9).objects] == [a]
        with pytest.raises(WeaviateQueryError, match="vector lengths don't match"):
            handle.query.near_vector([1.0, 0.0, 0.0])
        with pytest.raises(WeaviateQueryError, match="does not implement"):
            handle.query.bm25("billing")
        assert handle.aggregate.over_all(total_count=True).total_count == 2
        assert handle.aggregate.over_all(filters=Filter.by_property("words").equal("hr")).total_count == 1
    finally:
        client.close()
        weaviate_server.auto_schema = True


def test_status_codes_map_onto_the_error_tree(service: WeaviateVectorService) -> None:
    from weaviate.exceptions import UnexpectedStatusCodeError

    def status(code: int) -> UnexpectedStatusCodeError:
        request = httpx.Request("POST", "http://weaviate/v1/schema")
        return UnexpectedStatusCodeError("create", httpx.Response(code, json={}, request=request))

    for code, error in (
        (401, ConfigurationError),
        (422, InvalidInput),
        (429, BackendUnavailable),
        (503, BackendUnavailable),
    ):
        with pytest.raises(error, match=str(code)), service._errors("creating collection X"):
            raise status(code)
