"""The vector-store contract shared by every backend, and the validation both backends apply.

A backend stores texts with their metadata and an embedding, and finds the stored texts most similar to a
query. Both backends give the same answers to the same calls: the same validation (this module), the same
score (cosine similarity, best first) and the same filter semantics (:func:`filter_terms`).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np
import numpy.typing as npt

from fabric.errors import ConfigurationError, InvalidInput
from services.embeddings.base import Embedder

FloatMatrix = npt.NDArray[np.float32]

#: Our collection names: lower case, so the mapping to Weaviate's capitalised class names is one to one.
COLLECTION_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_ID_LENGTH = 256
MAX_LIMIT = 1000

FilterScalar = str | int | float | bool | None

#: json's own (C-accelerated) string encoder, as json.dumps(value, ensure_ascii=False) spells strings.
_encode_string: Callable[[str], str] = encode_basestring


class SearchResult(TypedDict):
    """One hit of :meth:`VectorService.search_similar`."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class PreparedItem:
    """A validated item ready to store: its id, text, metadata (JSON-safe) and its filter terms."""

    id: str
    text: str
    metadata: dict[str, Any]
    metadata_json: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection records about its vectors: their dimension and the embedding model that made them
    (``None`` for a collection created before models were recorded, or holding only precomputed vectors)."""

    dimension: int
    model: str | None


class EmbeddingModelMismatch(ConfigurationError):
    """A collection holds vectors of another embedding model than the one the service embeds with.

    Scores between vectors of two models mean nothing, so a store or search is refused rather than mixed;
    ``wft reindex`` drops such a collection and rebuilds it from the object store with the current model.
    """


def model_mismatch(collection: str, recorded: CollectionInfo, embedder: Embedder) -> EmbeddingModelMismatch:
    """The error for a collection whose recorded model is not ``embedder``'s."""
    return EmbeddingModelMismatch(
        f"collection {collection!r} holds vectors of embedding model {recorded.model!r} "
        f"({recorded.dimension} dimensions) but the embedder is now {embedder.model_name!r} "
        f"({embedder.dimension} dimensions); vectors of two models cannot be "
        "compared: run `wft reindex` to rebuild the collection with the new model (or set EMBEDDINGS / "
        "LOCAL_EMBEDDING_MODEL back to the model it was built with)"
    )


def check_model(collection: str, recorded: CollectionInfo, embedder: Embedder) -> None:
    """Raise :class:`EmbeddingModelMismatch` unless ``recorded`` was made by ``embedder``'s model.

    A collection without a recorded model (older, or precomputed vectors only) is checked by dimension alone.
    """
    if recorded.model is not None and recorded.model != embedder.model_name:
        raise model_mismatch(collection, recorded, embedder)


@runtime_checkable
class VectorService(Protocol):
    """The guide's vector service. Every method raises :class:`~fabric.errors.InvalidInput` on bad
    arguments and :class:`~fabric.errors.BackendUnavailable` when the store cannot be reached."""

    def store_vector(
        self, collection_name: str, text: str, metadata: Mapping[str, Any], vector_id: str | None = None
    ) -> str: ...

    def store_vectors(self, collection_name: str, items: Sequence[Mapping[str, Any]]) -> list[str]: ...

    def search_similar(
        self,
        collection_name: str,
        query_text: str,
        limit: int = 5,
        score_threshold: float = 0.7,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchResult]: ...

    def delete_vector(self, collection_name: str, vector_id: str) -> bool: ...

    def count(self, collection_name: str) -> int: ...

    def collection_info(self, collection_name: str) -> CollectionInfo | None: ...

    def delete_collection(self, collection_name: str) -> bool: ...

    def health_check(self) -> dict[str, Any]: ...


# --- validation ---------------------------------------------------------------------------------------


def validate_collection_name(name: object) -> str:
    """Return ``name`` if it is a valid collection name, else raise :class:`InvalidInput`.

    Valid: a lower-case letter, then up to 63 lower-case letters, digits or underscores.
    """
    if not isinstance(name, str) or not COLLECTION_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"collection name {name!r} is invalid: use a lower-case letter followed by up to 63 lower-case "
            "letters, digits or underscores"
        )
    return name


def validate_vector_id(collection: str, vector_id: object) -> str:
    """Return ``vector_id`` if it is a non-empty string of at most 256 characters, else raise."""
    if not isinstance(vector_id, str) or not vector_id or len(vector_id) > MAX_ID_LENGTH:
        raise InvalidInput(
            f"vector id {vector_id!r} for collection {collection!r} is invalid: "
            f"use a non-empty string of at most {MAX_ID_LENGTH} characters"
        )
    return vector_id


def new_vector_id() -> str:
    """A fresh random id for a vector stored without one."""
    return uuid.uuid4().hex


def _canonical(value: FilterScalar) -> str:
    # One spelling per value so stored terms and query terms compare as strings: 1 and 1.0 are equal (as in
    # JSON and Python), True and 1 are not (as in JSON). Spelled as json.dumps would, without its overhead
    # (this runs for every metadata value of every stored item). NaN and infinity never get here.
    if isinstance(value, str):
        return _encode_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(int(value))


def _term(key: str, value: FilterScalar) -> str:
    return f"{_encode_string(key)}={_canonical(value)}"


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _is_scalar(value: object) -> bool:
    # The exact-type lookup is the fast path for the values JSON gives; subclasses take the slow one.
    return type(value) in _SCALAR_TYPES or value is None or isinstance(value, str | int | float | bool)


def filter_terms(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The filterable terms of ``metadata``: one per scalar value, one per scalar element of a list value.

    ``{"category": "finance", "tags": ["a", "b"]}`` gives the terms of ``category=finance``, ``tags=a`` and
    ``tags=b``; a filter ``{"tags": "a"}`` matches when its term is among them (membership for lists,
    equality for scalars). Nested objects are stored but not filterable.
    """
    terms: set[str] = set()
    for key, value in metadata.items():
        if _is_scalar(value):
            terms.add(_term(key, value))
        elif isinstance(value, list | tuple):
            terms.update(_term(key, element) for element in value if _is_scalar(element))
    return tuple(sorted(terms))


def query_terms(collection: str, filters: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The terms a filter requires (all of them), validated. ``None`` or ``{}`` requires nothing."""
    if filters is None:
        return ()
    if not isinstance(filters, Mapping):
        raise InvalidInput(
            f"filters for collection {collection!r} must be a mapping, got {type(filters).__name__}"
        )
    terms = []
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"filter key {key!r} for collection {collection!r} must be a non-empty string")
        if not _is_scalar(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidInput(
                f"filter {key!r}={value!r} for collection {collection!r} is invalid: a filter value must "
                "be a string, number, boolean or null (it matches equal values and list elements)"
            )
        terms.append(_term(key, value))
    return tuple(sorted(set(terms)))


def prepare_item(
    collection: str, text: object, metadata: object, vector_id: object | None, *, index: int | None = None
) -> PreparedItem:
    """Validate one item and return it ready to store. Raises :class:`InvalidInput` naming the problem."""
    where = f"collection {collection!r}" + (f", item {index}" if index is not None else "")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"text for {where} must be a non-empty string, got {text!r:.80}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"metadata for {where} must be a mapping, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"metadata key {key!r} for {where} must be a string")
    try:
        metadata_json = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata for {where} is not JSON-serialisable: {exc}") from exc
    item_id = new_vector_id() if vector_id is None else validate_vector_id(collection, vector_id)
    # Searches return json.loads(metadata_json): exactly what was stored, on every backend.
    return PreparedItem(item_id, text, dict(metadata), metadata_json, filter_terms(metadata))


def prepare_items(
    collection: str, items: Sequence[Mapping[str, Any]]
) -> tuple[list[PreparedItem], list[object | None]]:
    """Validate a batch; return the prepared items and each item's precomputed vector (or ``None``).

    Each item is a mapping with ``text``, optional ``metadata``, optional ``id`` and optional ``vector``.
    """
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidInput(f"items for collection {collection!r} must be a list of mappings")
    prepared = []
    vectors: list[object | None] = []
    allowed = {"text", "metadata", "id", "vector"}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"item {index} for collection {collection!r} must be a mapping")
        unknown = set(item) - allowed
        if unknown:
            raise InvalidInput(
                f"item {index} for collection {collection!r} has unknown keys {sorted(unknown)}; "
                f"allowed: {sorted(allowed)}"
            )
        if "text" not in item:
            raise InvalidInput(f"item {index} for collection {collection!r} has no 'text'")
        prepared.append(
            prepare_item(collection, item["text"], item.get("metadata"), item.get("id"), index=index)
        )
        vectors.append(item.get("vector"))
    return prepared, vectors


def validate_search(collection: str, query_text: object, limit: object, score_threshold: object) -> None:
    """Check the scalar arguments of a search; raise :class:`InvalidInput` naming the bad one."""
    if not isinstance(query_text, str) or not query_text.strip():
        raise InvalidInput(f"query_text for collection {collection!r} must be a non-empty string")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(
            f"limit for collection {collection!r} must be an integer in 1..{MAX_LIMIT}, got {limit!r}"
        )
    if (
        isinstance(score_threshold, bool)
        or not isinstance(score_threshold, int | float)
        or not -1.0 <= float(score_threshold) <= 1.0
    ):
        raise InvalidInput(
            f"score_threshold for collection {collection!r} must be a number in -1..1 (cosine similarity), "
            f"got {score_threshold!r}"
        )


# --- vectors ------------------------------------------------------------------------------------------


def dimension_mismatch(collection: str, expected: int, got: int, what: str = "vector") -> InvalidInput:
    """The error for a vector whose dimension differs from the collection's."""
    return InvalidInput(
        f"collection {collection!r} holds {expected}-dimensional vectors but the {what} has {got} "
        "dimensions; a collection's dimension is fixed when it is created (changed embedder? run "
        "`wft reindex` to rebuild it, or use another collection)"
    )


def normalize_rows(collection: str, matrix: npt.ArrayLike) -> FloatMatrix:
    """Return ``matrix`` as C-contiguous float32 with unit-length rows, so a dot product is the cosine.

    Raises :class:`InvalidInput` for a non-2-D array, a non-finite value or a zero row.
    """
    array = np.array(matrix, dtype=np.float32, copy=True)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidInput(
            f"vectors for collection {collection!r} must be a 2-D array, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"vectors for collection {collection!r} contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InvalidInput(f"vector {int(zero[0])} for collection {collection!r} is all zeros (no direction)")
    array /= norms[:, None]
    return np.ascontiguousarray(array)


def resolve_vectors(
    collection: str, items: Sequence[PreparedItem], given: Sequence[object | None], embedder: Embedder
) -> FloatMatrix:
    """One unit-length vector per item: the precomputed one where given, else the embedder's.

    Texts without a vector are embedded in one batch. Raises :class:`InvalidInput` when the vectors do not
    all have the same dimension.
    """
    missing = [i for i, vector in enumerate(given) if vector is None]
    embedded = embedder.embed_array([items[i].text for i in missing]) if missing else None
    if len(missing) == len(items) and embedded is not None:
        return normalize_rows(collection, embedded)
    rows: list[npt.NDArray[np.float32]] = []
    position = {index: n for n, index in enumerate(missing)}
    for index, vector in enumerate(given):
        if vector is None:
            assert embedded is not None
            rows.append(np.asarray(embedded[position[index]], dtype=np.float32))
            continue
        row = np.asarray(vector, dtype=np.float32)
        if row.ndim != 1:
            raise InvalidInput(
                f"vector of item {index} for collection {collection!r} must be a flat list of numbers"
            )
        rows.append(row)
    dims = {row.shape[0] for row in rows}
    if len(dims) > 1:
        first = rows[0].shape[0]
        bad = next(i for i, row in enumerate(rows) if row.shape[0] != first)
        raise dimension_mismatch(collection, first, rows[bad].shape[0], what=f"vector of item {bad}")
    return normalize_rows(collection, np.stack(rows))


def embed_query(collection: str, query_text: str, embedder: Embedder) -> npt.NDArray[np.float32]:
    """The unit-length query vector of ``query_text``."""
    vector: npt.NDArray[np.float32] = normalize_rows(collection, embedder.embed_array([query_text]))[0]
    return vector


def score_from_cosine_distance(distance: float) -> float:
    """Weaviate's cosine distance ``d = 1 - cos`` as our score ``cos``, clamped to [-1, 1]."""
    return max(-1.0, min(1.0, 1.0 - float(distance)))
