"""Vector search: the guide's ``get_vector_service()``.

``VECTOR_BACKEND=embedded`` (default) keeps vectors in ``<DATA_DIR>/vectors/vectors.db`` with an in-memory
exact/HNSW index per process; ``VECTOR_BACKEND=weaviate`` uses a Weaviate server (``WEAVIATE_URL``). Both
embed texts with :func:`services.embeddings.get_embedder` and answer the same contract
(:class:`services.vectors.base.VectorService`).

    from services.vectors import get_vector_service
    service = get_vector_service()
    service.store_vector("workflows", "Send invoice reminders", {"workflow_id": "wf-1", "tags": ["billing"]})
    service.search_similar("workflows", "remind customers to pay", limit=5, filters={"tags": "billing"})
"""

from __future__ import annotations

from config import get_settings
from fabric.registry import PerProcess
from services.vectors.base import CollectionInfo, EmbeddingModelMismatch, SearchResult, VectorService

__all__ = [
    "CollectionInfo",
    "EmbeddingModelMismatch",
    "SearchResult",
    "VectorService",
    "drop_if_model_changed",
    "get_vector_service",
    "reset_vector_service",
]


def _build() -> VectorService:
    if get_settings().vector_backend == "weaviate":
        from services.vectors.weaviate_backend import WeaviateVectorService

        return WeaviateVectorService()
    from services.vectors.embedded import EmbeddedVectorService

    return EmbeddedVectorService()


_service: PerProcess[VectorService] = PerProcess("vector service", _build)


def get_vector_service() -> VectorService:
    """The process's vector service, chosen by ``settings.vector_backend`` and built on first call.

    Building connects nothing: the SQLite file or the Weaviate client is opened on first use, and a forked
    worker child builds its own instance (see :mod:`fabric.registry`). Returns a
    :class:`~services.vectors.base.VectorService`.
    """
    return _service.get()


def reset_vector_service() -> None:
    """Close and forget the process's service; the next call reads the settings again (tests, CLI)."""
    _service.reset()


def drop_if_model_changed(collection_name: str) -> CollectionInfo | None:
    """Delete ``collection_name`` if its vectors were made by another embedding model than the current one.

    ``wft reindex`` calls it before it resends the workflows, so the workers rebuild the collection with the
    model they embed with now instead of having every store refused (:class:`EmbeddingModelMismatch`).
    Returns what the dropped collection recorded, or None when it was kept (same model, no model recorded,
    or no collection). Raises :class:`~fabric.errors.BackendUnavailable` when the store cannot be reached.
    """
    from services.embeddings import get_embedder

    service = get_vector_service()
    info = service.collection_info(collection_name)
    if info is None or info.model is None or info.model == get_embedder().model_name:
        return None
    service.delete_collection(collection_name)
    return info
