"""The vector contract: the same tests on the embedded engine and on the Weaviate adapter (the real client
over the wire against the protocol stand-in)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fabric.errors import ConfigurationError, InvalidInput
from services.embeddings.base import Embedder
from services.vectors.base import CollectionInfo, EmbeddingModelMismatch, VectorService

WORKFLOWS = [
    (
        "wf-invoice",
        "Send invoice reminders to customers with overdue payments",
        {"workflow_id": "wf-invoice", "category": "finance", "tags": ["billing", "email"], "priority": 2},
    ),
    (
        "wf-refund",
        "Process refund requests and update the billing ledger",
        {"workflow_id": "wf-refund", "category": "finance", "tags": ["billing-ops"], "priority": 1},
    ),
    (
        "wf-onboard",
        "Onboard a new employee: create accounts, order a laptop, schedule training",
        {"workflow_id": "wf-onboard", "category": "people", "tags": ["hr", "it"], "priority": 2},
    ),
    (
        "wf-backup",
        "Back up the production database every night and verify the snapshot",
        {"workflow_id": "wf-backup", "category": "ops", "tags": ["database", "it"], "urgent": True},
    ),
    (
        "wf-slack",
        "Post a daily summary of new support tickets to the team Slack channel",
        {"workflow_id": "wf-slack", "category": "support", "tags": ["slack", "email"], "urgent": False},
    ),
]


@pytest.fixture
def stored(vector_service: VectorService) -> VectorService:
    ids = vector_service.store_vectors(
        "workflows", [{"id": i, "text": t, "metadata": m} for i, t, m in WORKFLOWS]
    )
    assert ids == [i for i, _, _ in WORKFLOWS]
    return vector_service


def cosine(embedder: Embedder, a: str, b: str) -> float:
    va, vb = embedder.embed_array([a, b])
    return float(np.dot(va, vb) / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_store_vector_returns_the_given_id_and_search_finds_it(vector_service: VectorService) -> None:
    metadata = {"workflow_id": "wf-1", "name": "Invoices", "tags": ["billing"], "nested": {"a": [1, 2]}}
    assert (
        vector_service.store_vector("workflows", "Send invoice reminders", metadata, vector_id="wf-1")
        == "wf-1"
    )
    results = vector_service.search_similar("workflows", "Send invoice reminders")
    assert [r["id"] for r in results] == ["wf-1"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert results[0]["text"] == "Send invoice reminders"
    assert results[0]["metadata"] == metadata


def test_store_vector_without_id_generates_distinct_ids(vector_service: VectorService) -> None:
    first = vector_service.store_vector("workflows", "Send invoice reminders", {})
    second = vector_service.store_vector("workflows", "Send invoice reminders", {})
    assert isinstance(first, str) and first and first != second
    assert vector_service.count("workflows") == 2


def test_storing_the_same_id_twice_replaces(vector_service: VectorService) -> None:
    vector_service.store_vector("workflows", "Send invoice reminders", {"v": 1}, vector_id="wf-1")
    vector_service.store_vector("workflows", "Back up the database nightly", {"v": 2}, vector_id="wf-1")
    vector_service.store_vectors(
        "workflows", [{"id": "wf-1", "text": "Back up the database nightly", "metadata": {"v": 3}}]
    )
    assert vector_service.count("workflows") == 1
    results = vector_service.search_similar("workflows", "Back up the database nightly", score_threshold=-1)
    assert [(r["id"], r["metadata"]) for r in results] == [("wf-1", {"v": 3})]
    old = vector_service.search_similar("workflows", "Send invoice reminders", score_threshold=-1)
    assert [r["id"] for r in old] == ["wf-1"]
    assert old[0]["text"] == "Back up the database nightly"


def test_batch_store_keeps_order_and_last_of_a_repeated_id(vector_service: VectorService) -> None:
    items = [{"text": f"workflow number {n} sends reports", "metadata": {"n": n}} for n in range(30)]
    items.append({"id": "dup", "text": "first version", "metadata": {"v": 1}})
    items.append({"id": "dup", "text": "second version", "metadata": {"v": 2}})
    ids = vector_service.store_vectors("reports", items)
    assert len(ids) == 32 and ids[-2:] == ["dup", "dup"] and len(set(ids[:30])) == 30
    assert vector_service.count("reports") == 31
    hit = vector_service.search_similar("reports", "second version", limit=1, score_threshold=-1)
    assert hit[0]["id"] == "dup" and hit[0]["metadata"] == {"v": 2}
    assert vector_service.store_vectors("reports", []) == []


def test_batch_store_accepts_precomputed_vectors(vector_service: VectorService, embedder: Embedder) -> None:
    vector = embedder.embed_array(["Back up the production database"])[0] * 3.0  # not unit length
    ids = vector_service.store_vectors(
        "workflows",
        [
            {"id": "pre", "text": "a text whose vector was computed elsewhere", "vector": vector.tolist()},
            {"id": "embedded", "text": "Post a Slack summary"},
        ],
    )
    assert ids == ["pre", "embedded"]
    results = vector_service.search_similar("workflows", "Back up the production database", limit=1)
    assert results[0]["id"] == "pre"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_scores_are_cosine_similarity_best_first(stored: VectorService, embedder: Embedder) -> None:
    query = "remind customers to pay their invoices"
    results = stored.search_similar("workflows", query, limit=5, score_threshold=-1)
    assert [r["id"] for r in results] == sorted(
        (i for i, _, _ in WORKFLOWS),
        key=lambda i: -cosine(embedder, query, {w[0]: w[1] for w in WORKFLOWS}[i]),
    )
    texts = {i: t for i, t, _ in WORKFLOWS}
    for result in results:
        assert result["score"] == pytest.approx(cosine(embedder, query, texts[result["id"]]), abs=1e-4)
    assert results[0]["id"] == "wf-invoice"


def test_score_threshold_and_limit(stored: VectorService, embedder: Embedder) -> None:
    query = "remind customers to pay their invoices"
    expected = sorted((cosine(embedder, query, t) for _, t, _ in WORKFLOWS), reverse=True)
    threshold = (expected[1] + expected[2]) / 2
    results = stored.search_similar("workflows", query, limit=5, score_threshold=threshold)
    assert len(results) == 2 and all(r["score"] >= threshold for r in results)
    assert len(stored.search_similar("workflows", query, limit=3, score_threshold=-1)) == 3
    assert stored.search_similar("workflows", query, score_threshold=1.0) == []


def test_filter_equality_on_a_scalar(stored: VectorService) -> None:
    results = stored.search_similar(
        "workflows", "customers", limit=5, score_threshold=-1, filters={"category": "finance"}
    )
    assert {r["id"] for r in results} == {"wf-invoice", "wf-refund"}
    numbers = stored.search_similar(
        "workflows", "customers", limit=5, score_threshold=-1, filters={"priority": 1}
    )
    assert [r["id"] for r in numbers] == ["wf-refund"]
    also_float = stored.search_similar(
        "workflows", "customers", limit=5, score_threshold=-1, filters={"priority": 1.0}
    )
    assert [r["id"] for r in also_float] == ["wf-refund"]
    flags = stored.search_similar(
        "workflows", "customers", limit=5, score_threshold=-1, filters={"urgent": True}
    )
    assert [r["id"] for r in flags] == ["wf-backup"]


def test_filter_membership_on_a_list(stored: VectorService) -> None:
    results = stored.search_similar(
        "workflows", "customers", limit=5, score_threshold=-1, filters={"tags": "billing"}
    )
    # Whole values only: "billing-ops" is another tag, "bill" matches nothing.
    assert [r["id"] for r in results] == ["wf-invoice"]
    assert stored.search_similar("workflows", "customers", score_threshold=-1, filters={"tags": "bill"}) == []
    both = stored.search_similar(
        "workflows",
        "customers",
        limit=5,
        score_threshold=-1,
        filters={"tags": "email", "category": "support"},
    )
    assert [r["id"] for r in both] == ["wf-slack"]
    assert stored.search_similar("workflows", "x", score_threshold=-1, filters={"missing_key": "x"}) == []
    assert len(stored.search_similar("workflows", "x", limit=5, score_threshold=-1, filters={})) == 5


def test_delete_vector(stored: VectorService) -> None:
    assert stored.delete_vector("workflows", "wf-invoice") is True
    assert stored.delete_vector("workflows", "wf-invoice") is False
    assert stored.count("workflows") == 4
    results = stored.search_similar(
        "workflows", "Send invoice reminders to customers", limit=5, score_threshold=-1
    )
    assert "wf-invoice" not in {r["id"] for r in results}
    stored.store_vector("workflows", "Send invoice reminders again", {}, vector_id="wf-invoice")
    assert stored.count("workflows") == 5


def test_missing_collection_is_empty(vector_service: VectorService) -> None:
    assert vector_service.search_similar("nothing_here", "anything") == []
    assert vector_service.count("nothing_here") == 0
    assert vector_service.delete_vector("nothing_here", "x") is False
    assert vector_service.delete_collection("nothing_here") is False


def test_other_instance_sees_writes(stored: VectorService, other_instance: VectorService) -> None:
    assert other_instance.count("workflows") == len(WORKFLOWS)
    other_instance.store_vector(
        "workflows", "Rotate the TLS certificates", {"tags": ["it"]}, vector_id="wf-tls"
    )
    other_instance.delete_vector("workflows", "wf-slack")
    results = stored.search_similar("workflows", "Rotate the TLS certificates", limit=10, score_threshold=-1)
    assert results[0]["id"] == "wf-tls"
    assert "wf-slack" not in {r["id"] for r in results}
    assert len(results) == len(WORKFLOWS)


def test_dimension_is_fixed_when_the_collection_is_created(
    stored: VectorService, narrower_service: VectorService, embedder: Embedder
) -> None:
    full = embedder.dimension
    # Another model (here: the same one cut to 32 dimensions) is refused first for being another model.
    with pytest.raises(
        EmbeddingModelMismatch, match=rf"'workflows'.*{full} dimensions.*32 dimensions.*wft reindex"
    ):
        narrower_service.store_vector("workflows", "Send invoice reminders", {})
    with pytest.raises(EmbeddingModelMismatch, match=r"'workflows'.*wft reindex"):
        narrower_service.search_similar("workflows", "Send invoice reminders")
    with pytest.raises(InvalidInput, match=rf"'workflows'.*{full}.*3 "):
        stored.store_vectors("workflows", [{"text": "precomputed", "vector": [0.1, 0.2, 0.3]}])
    assert stored.count("workflows") == len(WORKFLOWS)
    # A new collection takes the dimension (and model) of its first vector.
    narrower_service.store_vector("narrow", "Send invoice reminders", {})
    assert narrower_service.collection_info("narrow") == CollectionInfo(32, f"{embedder.model_name}[:32]")
    with pytest.raises(EmbeddingModelMismatch, match=rf"'narrow'.*32 dimensions.*{full} dimensions"):
        stored.store_vector("narrow", "Send invoice reminders", {})
    # Deleting a collection frees its name for another dimension.
    assert stored.delete_collection("narrow") is True
    stored.store_vector("narrow", "Send invoice reminders", {})
    assert stored.count("narrow") == 1


def test_a_collection_records_its_model_and_refuses_another(
    stored: VectorService, renamed_service: VectorService, embedder: Embedder
) -> None:
    assert stored.collection_info("workflows") == CollectionInfo(embedder.dimension, embedder.model_name)
    assert stored.collection_info("nothing_here") is None
    # Same dimension, another model: nothing would catch it but the recorded model.
    with pytest.raises(EmbeddingModelMismatch, match=r"another-model-v2.*wft reindex") as refused:
        renamed_service.store_vectors("workflows", [{"id": "new", "text": "Rotate the TLS certificates"}])
    assert isinstance(refused.value, ConfigurationError)  # permanent: dead-lettered, not retried
    assert embedder.model_name in str(refused.value)
    with pytest.raises(EmbeddingModelMismatch, match="another-model-v2"):
        renamed_service.search_similar("workflows", "Send invoice reminders")
    assert stored.count("workflows") == len(WORKFLOWS)
    found = stored.search_similar("workflows", "Rotate the TLS certificates", limit=9, score_threshold=-1)
    assert "new" not in {r["id"] for r in found}  # nothing of the other model was stored
    # What `wft reindex` does on a model change: drop, then the new model's vectors make a new collection.
    assert renamed_service.delete_collection("workflows") is True
    renamed_service.store_vectors("workflows", [{"id": i, "text": t} for i, t, _ in WORKFLOWS])
    assert renamed_service.collection_info("workflows") == CollectionInfo(
        embedder.dimension, "another-model-v2"
    )
    with pytest.raises(EmbeddingModelMismatch, match=rf"another-model-v2.*{re.escape(embedder.model_name)}"):
        stored.search_similar("workflows", "Send invoice reminders")


def test_mixed_dimensions_in_one_batch_are_refused(vector_service: VectorService) -> None:
    with pytest.raises(InvalidInput, match=r"item 1"):
        vector_service.store_vectors(
            "mixed", [{"text": "a", "vector": [1.0, 0.0]}, {"text": "b", "vector": [1.0]}]
        )
    assert vector_service.count("mixed") == 0


@pytest.mark.parametrize("name", ["", "Workflows", "bad-name", "1abc", "a" * 65, "with space", None, 7])
def test_collection_names_are_validated(vector_service: VectorService, name: object) -> None:
    with pytest.raises(InvalidInput, match="collection name"):
        vector_service.store_vector(name, "text", {})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="collection name"):
        vector_service.search_similar(name, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="collection name"):
        vector_service.count(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({"metadata": {"when": object()}}, "JSON"),
        ({"metadata": {"x": math.nan}}, "JSON"),
        ({"metadata": {1: "x"}}, "metadata key"),
        ({"metadata": ["not", "a", "dict"]}, "mapping"),
        ({"vector_id": ""}, "vector id"),
        ({"vector_id": "x" * 300}, "vector id"),
    ],
)
def test_bad_items_are_refused(
    vector_service: VectorService, kwargs: dict[str, object], message: str
) -> None:
    call: dict[str, object] = {"text": "Send invoice reminders", "metadata": {}, "vector_id": None} | kwargs
    with pytest.raises(InvalidInput, match=message):
        vector_service.store_vector("workflows", **call)  # type: ignore[arg-type]
    assert vector_service.count("workflows") == 0


def test_a_bad_item_refuses_the_whole_batch(vector_service: VectorService) -> None:
    items: list[dict[str, object]] = [{"text": f"text {n}"} for n in range(5)]
    items[3] = {"text": "ok", "metadata": {"bad": {1, 2}}}
    with pytest.raises(InvalidInput, match="item 3"):
        vector_service.store_vectors("workflows", items)
    with pytest.raises(InvalidInput, match="unknown keys"):
        vector_service.store_vectors("workflows", [{"text": "x", "vectr": [1.0]}])
    with pytest.raises(InvalidInput, match="all zeros"):
        vector_service.store_vectors("workflows", [{"text": "x", "vector": [0.0, 0.0]}])
    assert vector_service.count("workflows") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_text": ""}, "query_text"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"limit": True}, "limit"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"score_threshold": "high"}, "score_threshold"),
        ({"filters": {"tags": ["a", "b"]}}, "filter"),
        ({"filters": {"tags": {"a": 1}}}, "filter"),
        ({"filters": "tags=a"}, "filters"),
    ],
)
def test_bad_searches_are_refused(stored: VectorService, kwargs: dict[str, object], message: str) -> None:
    call: dict[str, object] = {"query_text": "invoices"} | kwargs
    with pytest.raises(InvalidInput, match=message):
        stored.search_similar("workflows", **call)  # type: ignore[arg-type]


def test_health_check(vector_service: VectorService) -> None:
    health = vector_service.health_check()
    assert health["status"] == "healthy"
