"""The embeddings contract. Every backend turns a batch of texts into unit-length float32 vectors.

Rules every backend keeps (checked by :func:`validate_texts` and :func:`normalize_rows`):

* ``texts`` is a sequence of strings; a bare ``str`` is refused, because iterating it would embed one
  character per row.
* An empty or whitespace-only text is refused with :class:`~fabric.errors.InvalidInput` naming its index.
  It carries no meaning, the local model maps it to the zero vector (for which cosine similarity is
  undefined) and the OpenAI API answers 400 to it; refusing it up front gives one behaviour for every backend.
* Rows come back L2-normalised, so a dot product is the cosine similarity. A backend that produces a zero
  row anyway raises :class:`~fabric.errors.PermanentError` instead of returning it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

from fabric.errors import InvalidInput, PermanentError

FloatMatrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors, always in batches.

    ``embed_array`` is the fast path the vector store uses: an ``(len(texts), dimension)`` float32 array,
    each row L2-normalised so a dot product is the cosine similarity. ``embed`` is the same as plain lists.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def health_check(self) -> dict[str, object]: ...


class InProcessEmbedder:
    """Base of the embedders that run a model in this process: ``embed`` and ``health_check`` from the
    subclass's ``embed_array`` and ``model_name``."""

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Same as :meth:`embed_array`, as lists of Python floats."""
        return cast("list[list[float]]", self.embed_array(texts).tolist())

    def health_check(self) -> dict[str, object]:
        """Load the model and embed a probe text. Returns ``{"status": "healthy", ...}``; raises
        :class:`~fabric.errors.ConfigurationError` if the model cannot be loaded."""
        vector = self.embed_array(["health check"])
        return {
            "status": "healthy",
            "backend": "local",
            "model": self.model_name,
            "dimension": int(vector.shape[1]),
        }


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Check a batch before it is embedded.

    Takes a sequence of strings; returns them as a list. Raises :class:`InvalidInput` for a bare string,
    a non-string item, or an empty / whitespace-only text (naming up to five offending indices).
    """
    if isinstance(texts, str | bytes):
        raise InvalidInput("texts must be a sequence of strings, not a single string: wrap it in a list")
    items = list(texts)
    not_str = [i for i, text in enumerate(items) if not isinstance(text, str)]
    if not_str:
        raise InvalidInput(f"texts must be strings; items at indices {not_str[:5]} are not")
    blank = [i for i, text in enumerate(items) if not text.strip()]
    if blank:
        raise InvalidInput(
            f"{len(blank)} text(s) are empty or whitespace only (indices {blank[:5]}); "
            "an empty text has no embedding: leave it out or give it content"
        )
    return items


def normalize_rows(matrix: npt.ArrayLike, model_name: str) -> FloatMatrix:
    """Return ``matrix`` as a C-contiguous float32 array whose rows have unit L2 norm.

    Raises :class:`PermanentError` if a row is zero or not finite: no direction can be given to it, and
    a NaN would silently poison every similarity computed against it.
    """
    array = np.array(matrix, dtype=np.float32, copy=True, order="C")
    if array.ndim != 2:
        raise PermanentError(f"model {model_name} returned an array of shape {array.shape}, not (n, dim)")
    if array.shape[0] == 0:
        return array
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0.0))
    if bad.size:
        raise PermanentError(
            f"model {model_name} returned zero or non-finite vectors for texts at indices {bad[:5].tolist()}"
        )
    array /= norms[:, None]
    return array
