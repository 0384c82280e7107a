"""The Weaviate adapter beyond the contract: schema, deterministic UUIDs, batch errors, outages.

Runs against ``tests/support/fake_weaviate.py``: no Weaviate server can run here.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from weaviate.classes.config import Configure, DataType, Property
from weaviate.util import generate_uuid5

from fabric.errors import BackendUnavailable, ConfigurationError
from services.embeddings.base import Embedder
from services.vectors import weaviate_backend
from services.vectors.weaviate_backend import (
    WeaviateBatchError,
    WeaviateVectorService,
    object_uuid,
    weaviate_class_name,
)
from tests.support.fake_weaviate import FakeWeaviateClient


@pytest.fixture
def service(fake_weaviate: FakeWeaviateClient, embedder: Embedder) -> WeaviateVectorService:
    return WeaviateVectorService(client=fake_weaviate, embedder=embedder)  # type: ignore[arg-type]


def test_collection_names_map_to_capitalised_classes() -> None:
    assert weaviate_class_name("workflows") == "Workflows"
    assert weaviate_class_name("exec_logs_2") == "Exec_logs_2"


def test_collection_schema_brings_its_own_vectors(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    service.store_vector("workflows", "Send invoice reminders", {"tags": ["billing"]}, vector_id="wf-1")
    config = fake_weaviate.collections.get("Workflows").config.get()
    schema = config.schema
    assert schema["class"] == "Workflows"
    assert schema["vectorConfig"] == {
        "default": {
            "vectorizer": {"none": {}},
            "vectorIndexType": "hnsw",
            "vectorIndexConfig": {"distance": "cosine"},
        }
    }
    props = {p["name"]: p for p in schema["properties"]}
    assert (
        props["filter_terms"]["dataType"] == ["text[]"] and props["filter_terms"]["tokenization"] == "field"
    )
    assert props["text"]["indexFilterable"] is False
    assert "dimension=64" in (config.description or "")


def test_uuids_are_deterministic_so_redelivery_is_idempotent(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    expected = generate_uuid5("wf-1", "workflows/")
    assert object_uuid("workflows", "wf-1") == expected
    for _ in range(3):
        service.store_vector("workflows", "Send invoice reminders", {"attempt": 1}, vector_id="wf-1")
    handle = fake_weaviate.collections.get("Workflows")
    assert handle.data.exists(expected)
    assert handle.aggregate.over_all(total_count=True).total_count == 1
    # Same id, other collection: another object.
    assert object_uuid("workflows2", "wf-1") != expected
    assert object_uuid("a", "bc") != object_uuid("ab", "c")


def test_every_failed_object_of_a_batch_is_raised(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    refused = {object_uuid("workflows", "wf-3"), object_uuid("workflows", "wf-7")}
    fake_weaviate.batch_error = lambda key, props: "invalid property value" if str(key) in refused else None
    items = [{"id": f"wf-{n}", "text": f"workflow {n} posts reports"} for n in range(10)]
    with pytest.raises(WeaviateBatchError, match=r"2 objects.*'wf-3': invalid property value; 'wf-7'"):
        service.store_vectors("workflows", items)
    assert service.count("workflows") == 8  # the others were stored, as Weaviate does


def test_a_batch_failing_entirely_is_raised(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    fake_weaviate.batch_error = lambda key, props: "disk full"
    with pytest.raises(WeaviateBatchError, match=r"all 3 objects.*disk full"):
        service.store_vectors("workflows", [{"text": f"workflow {n}"} for n in range(3)])


def test_transient_batch_failures_are_retryable(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    fake_weaviate.batch_error = lambda key, props: (
        "context deadline exceeded" if props["vector_id"] == "b" else None
    )
    with pytest.raises(BackendUnavailable, match="'b': context deadline exceeded"):
        service.store_vectors("workflows", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}])


def test_large_batches_are_sent_in_chunks(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2500, 16))
    ids = service.store_vectors(
        "bulk", [{"id": f"v{n}", "text": f"item {n}", "vector": v.tolist()} for n, v in enumerate(vectors)]
    )
    assert len(ids) == 2500 and service.count("bulk") == 2500
    assert fake_weaviate.calls.count("data.insert_many") == 3


def test_server_down_is_a_transient_error(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
    fake_weaviate.down = True
    with pytest.raises(BackendUnavailable):
        service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
    with pytest.raises(BackendUnavailable):
        service.search_similar("workflows", "invoices")
    with pytest.raises(BackendUnavailable):
        service.count("workflows")
    assert service.health_check()["status"] == "unhealthy"
    fake_weaviate.down = False
    assert service.search_similar("workflows", "Send invoice reminders")[0]["id"] == "wf-1"


def test_a_foreign_collection_is_not_used(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient
) -> None:
    fake_weaviate.collections.create(
        "Workflows",
        properties=[Property(name="title", data_type=DataType.TEXT)],
        vector_config=Configure.Vectors.self_provided(),
    )
    with pytest.raises(ConfigurationError, match=r"Workflows.*no dimension"):
        service.store_vector("workflows", "Send invoice reminders", {})


def test_a_collection_created_by_another_worker_is_reused(
    fake_weaviate: FakeWeaviateClient, embedder: Embedder
) -> None:
    first = WeaviateVectorService(client=fake_weaviate, embedder=embedder)  # type: ignore[arg-type]
    second = WeaviateVectorService(client=fake_weaviate, embedder=embedder)  # type: ignore[arg-type]
    assert second._dimension("workflows") is None  # second has looked: no collection yet
    first.store_vector("workflows", "one", {}, vector_id="a")
    second.store_vector("workflows", "two", {}, vector_id="b")
    assert first.count("workflows") == 2


def test_lost_creation_race_is_tolerated(
    service: WeaviateVectorService, fake_weaviate: FakeWeaviateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = fake_weaviate.collections.create

    def create_twice(name: str, **kwargs: object) -> object:
        real_create(name, **kwargs)  # another worker wins the race ...
        return real_create(name, **kwargs)  # ... and ours is answered 422

    monkeypatch.setattr(fake_weaviate.collections, "create", create_twice)
    service.store_vector("workflows", "Send invoice reminders", {}, vector_id="wf-1")
    assert service.count("workflows") == 1


def test_scores_equal_the_embedded_engine(
    service: WeaviateVectorService, tmp_path, embedder: Embedder
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


def test_client_is_built_lazily_from_settings(monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> None:
    made: list[dict[str, object]] = []

    def fake_connect(**kwargs: object) -> FakeWeaviateClient:
        made.append(kwargs)
        return FakeWeaviateClient()

    monkeypatch.setattr("weaviate.connect_to_custom", fake_connect)
    service = WeaviateVectorService(embedder=embedder)
    assert made == []
    assert service.count("workflows") == 0
    assert (
        made[0]["http_host"] == "localhost" and made[0]["http_port"] == 8080 and made[0]["grpc_port"] == 50051
    )
    service.close()
    assert weaviate_backend.VECTOR_NAME == "default"


def test_fake_reproduces_weaviate_semantics(fake_weaviate: FakeWeaviateClient) -> None:
    """Self-checks of the stand-in, so the adapter's tests mean something."""
    from weaviate.classes.data import DataObject
    from weaviate.classes.query import Filter, MetadataQuery
    from weaviate.exceptions import WeaviateInsertManyAllFailedError, WeaviateQueryError

    handle = fake_weaviate.collections.create(
        "things",
        properties=[
            Property(name="words", data_type=DataType.TEXT_ARRAY),  # default word tokenization
            Property(name="hidden", data_type=DataType.TEXT, index_filterable=False),
        ],
        vector_config=Configure.Vectors.self_provided(name="default"),
    )
    assert handle.name == "Things" and fake_weaviate.collections.exists("things")
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
    found = handle.query.near_vector([1.0, 0.0], return_metadata=MetadataQuery(distance=True))
    assert [o.uuid for o in found.objects] == [a, b]
    assert found.objects[1].metadata.distance == pytest.approx(1 - 0.6)
    # Word tokenization splits "billing-ops": a whole-value filter needs field tokenization.
    assert [
        o.uuid
        for o in handle.query.near_vector(
            [1.0, 0.0], filters=Filter.by_property("words").equal("billing")
        ).objects
    ] == [a]
    with pytest.raises(WeaviateQueryError, match="indexFilterable"):
        handle.query.near_vector([1.0, 0.0], filters=Filter.by_property("hidden").equal("x"))
    assert handle.query.near_vector([1.0, 0.0], distance=0.1).objects[0].uuid == a
    assert len(handle.query.near_vector([1.0, 0.0], distance=0.1).objects) == 1


def test_status_codes_map_onto_the_error_tree(service: WeaviateVectorService) -> None:
    import httpx
    from weaviate.exceptions import UnexpectedStatusCodeError

    from fabric.errors import InvalidInput

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
