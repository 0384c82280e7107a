"""Fixtures of the vector contract suite: every test taking ``vector_service`` runs on every backend.

- ``embedded``: the real engine over a SQLite file in a fresh temp directory.
- ``weaviate-stand-in``: the real Weaviate adapter over ``tests/support/fake_weaviate.py`` (no Weaviate server
  can run here; see that module for what the stand-in reproduces).

Both embed with the project's embedder (:func:`services.embeddings.get_embedder`, the offline local model).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from services.embeddings import get_embedder
from services.embeddings.base import Embedder, FloatMatrix
from services.vectors.base import VectorService
from services.vectors.embedded import EmbeddedVectorService
from services.vectors.weaviate_backend import WeaviateVectorService
from tests.support.fake_weaviate import FakeWeaviateClient

BACKENDS = ["embedded", "weaviate-stand-in"]


class TruncatedEmbedder:
    """The project's embedder cut to its first ``dimension`` components: "an embedder that changed"."""

    def __init__(self, inner: Embedder, dimension: int) -> None:
        self._inner = inner
        self._dimension = dimension

    @property
    def model_name(self) -> str:
        return f"{self._inner.model_name}[:{self._dimension}]"

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        cut = np.ascontiguousarray(self._inner.embed_array(texts)[:, : self._dimension])
        return cut / np.linalg.norm(cut, axis=1, keepdims=True)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def health_check(self) -> dict[str, object]:
        return {"status": "healthy", "model": self.model_name}


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return get_embedder()


@pytest.fixture
def fake_weaviate() -> FakeWeaviateClient:
    return FakeWeaviateClient()


def make_service(backend: str, root: Path, client: FakeWeaviateClient, embedder: Embedder) -> VectorService:
    if backend == "embedded":
        return EmbeddedVectorService(path=root / "vectors.db", embedder=embedder)
    return WeaviateVectorService(client=client, embedder=embedder)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def vector_service(
    backend: str, tmp_path: Path, fake_weaviate: FakeWeaviateClient, embedder: Embedder
) -> Iterator[VectorService]:
    service = make_service(backend, tmp_path, fake_weaviate, embedder)
    yield service
    close = getattr(service, "close", None)
    if callable(close):
        close()


@pytest.fixture
def other_instance(
    backend: str, tmp_path: Path, fake_weaviate: FakeWeaviateClient, embedder: Embedder
) -> VectorService:
    """A second service over the same store (same file / same server), as another worker would have."""
    return make_service(backend, tmp_path, fake_weaviate, embedder)


@pytest.fixture
def narrower_service(
    backend: str, tmp_path: Path, fake_weaviate: FakeWeaviateClient, embedder: Embedder
) -> VectorService:
    """A service over the same store whose embedder gives 32 dimensions instead of 64."""
    return make_service(backend, tmp_path, fake_weaviate, TruncatedEmbedder(embedder, 32))
