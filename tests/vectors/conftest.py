"""Fixtures of the vector contract suite: every test taking ``vector_service`` runs on every backend.

- ``embedded``: the real engine over a SQLite file in a fresh temp directory.
- ``weaviate``: the real Weaviate adapter, which connects the real ``weaviate-client`` with
  ``weaviate.connect_to_custom(...)`` (from ``WEAVIATE_URL`` / ``WEAVIATE_GRPC_PORT``) over loopback to
  ``tests/support/weaviate_server.py``, a protocol stand-in serving Weaviate's REST and gRPC API. No real
  Weaviate runs here.

Both embed with the project's embedder (:func:`services.embeddings.get_embedder`, the offline default).
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
from tests.support.weaviate_server import weaviate_server, weaviate_stand_in

__all__ = ["weaviate_server", "weaviate_stand_in"]

BACKENDS = ["embedded", "weaviate"]


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


class RenamedEmbedder(TruncatedEmbedder):
    """The project's embedder, whole, under another model name: "a model that changed, same dimension"."""

    def __init__(self, inner: Embedder, name: str) -> None:
        super().__init__(inner, inner.dimension)
        self._name = name

    @property
    def model_name(self) -> str:
        return self._name


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return get_embedder()


def make_service(backend: str, root: Path, embedder: Embedder) -> VectorService:
    if backend == "embedded":
        return EmbeddedVectorService(path=root / "vectors.db", embedder=embedder)
    return WeaviateVectorService(embedder=embedder)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "weaviate":
        # Settings point at the stand-in (emptied) for the whole test, so services built in it connect there.
        request.getfixturevalue("weaviate_server")
    yield str(request.param)


@pytest.fixture
def services(backend: str, tmp_path: Path) -> Iterator[list[VectorService]]:
    """Every service a test made over the store (closed after it)."""
    made: list[VectorService] = []
    yield made
    for service in made:
        close = getattr(service, "close", None)
        if callable(close):
            close()


@pytest.fixture
def vector_service(
    backend: str, tmp_path: Path, embedder: Embedder, services: list[VectorService]
) -> VectorService:
    services.append(make_service(backend, tmp_path, embedder))
    return services[-1]


@pytest.fixture
def other_instance(
    backend: str, tmp_path: Path, embedder: Embedder, services: list[VectorService]
) -> VectorService:
    """A second service over the same store (same file / same server), as another worker would have."""
    services.append(make_service(backend, tmp_path, embedder))
    return services[-1]


@pytest.fixture
def narrower_service(
    backend: str, tmp_path: Path, embedder: Embedder, services: list[VectorService]
) -> VectorService:
    """A service over the same store whose embedder gives 32 dimensions instead of the model's own."""
    services.append(make_service(backend, tmp_path, TruncatedEmbedder(embedder, 32)))
    return services[-1]


@pytest.fixture
def renamed_service(
    backend: str, tmp_path: Path, embedder: Embedder, services: list[VectorService]
) -> VectorService:
    """A service over the same store whose embedder is another model of the same dimension."""
    services.append(make_service(backend, tmp_path, RenamedEmbedder(embedder, "another-model-v2")))
    return services[-1]
