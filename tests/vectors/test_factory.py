"""``get_vector_service()``: chosen by settings, cached per process, reset for tests, lazy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import get_settings, reload_settings
from services.vectors import get_vector_service, reset_vector_service
from services.vectors.base import VectorService
from services.vectors.embedded import EmbeddedVectorService
from services.vectors.weaviate_backend import WeaviateVectorService


@pytest.fixture(autouse=True)
def fresh_factory() -> Iterator[None]:
    reset_vector_service()
    yield
    reset_vector_service()
    reload_settings()


def test_default_is_the_embedded_engine_under_data_dir() -> None:
    service = get_vector_service()
    assert isinstance(service, EmbeddedVectorService) and isinstance(service, VectorService)
    assert service.path == get_settings().data_dir / "vectors" / "vectors.db"
    assert get_vector_service() is service
    reset_vector_service()
    assert get_vector_service() is not service


def test_default_service_uses_the_project_embedder() -> None:
    from services.embeddings import get_embedder

    service = get_vector_service()
    service.store_vector("factory_check", "Send invoice reminders", {"k": "v"}, vector_id="x")
    assert isinstance(service, EmbeddedVectorService) and service.embedder is get_embedder()
    assert service.search_similar("factory_check", "Send invoice reminders")[0]["id"] == "x"
    service.delete_collection("factory_check")


def test_weaviate_backend_by_configuration_connects_nothing_until_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VECTOR_BACKEND", "weaviate")
    reload_settings()
    service = get_vector_service()
    assert isinstance(service, WeaviateVectorService)
    assert service._client is None


def test_reindex_drops_a_collection_of_another_model_only() -> None:
    from services.embeddings import get_embedder
    from services.vectors import drop_if_model_changed
    from services.vectors.embedded import EmbeddedVectorService
    from tests.vectors.conftest import RenamedEmbedder

    service = get_vector_service()
    assert isinstance(service, EmbeddedVectorService)
    old = EmbeddedVectorService(path=service.path, embedder=RenamedEmbedder(get_embedder(), "old-model-v1"))
    old.store_vector("reindex_check", "Send invoice reminders", {}, vector_id="x")
    assert drop_if_model_changed("nothing_here") is None
    dropped = drop_if_model_changed("reindex_check")
    assert dropped is not None and dropped.model == "old-model-v1"
    assert service.collection_info("reindex_check") is None
    service.store_vector("reindex_check", "Send invoice reminders", {}, vector_id="x")  # the rebuild
    assert drop_if_model_changed("reindex_check") is None  # same model: kept
    assert service.count("reindex_check") == 1
    service.delete_collection("reindex_check")
