"""The Weaviate adapter (``weaviate-client`` v4): the embedded engine's contract, on a Weaviate server.

TESTED OVER THE WIRE AGAINST A PROTOCOL STAND-IN, NEVER AGAINST A REAL WEAVIATE. No Weaviate server can run
on our machines, so ``tests/vectors`` run the real client (``weaviate.connect_to_custom``, its REST and gRPC
transport, serialisation and errors) against ``tests/support/weaviate_server.py``, which serves Weaviate's
REST paths and gRPC service (the definitions ship with the client) in memory with Weaviate's documented
semantics. Run ``tests/vectors`` against a real server before relying on it in production.

How our contract maps onto Weaviate:

- Collection ``workflows`` is Weaviate class ``Workflows``: Weaviate capitalises the first letter, and our
  names are lower case, so the mapping is one to one.
- Each collection has one self-provided named vector ``default`` (no server-side vectorizer: we bring the
  vectors) in an HNSW index with cosine distance. Weaviate's cosine distance is ``1 - cos``, so our score is
  ``1 - distance``: the same number the embedded engine returns.
- Object UUIDs are ``generate_uuid5(id, "<collection>/")``: storing the same id again (a redelivered task)
  replaces the object, because a batch import with an existing UUID overwrites it.
- Properties: ``vector_id`` and ``text``; ``metadata_json`` (the metadata exactly as given, returned as is);
  ``filter_terms`` (text[], ``field`` tokenization: whole strings, so ``tags="billing"`` never matches
  ``tags="billing-ops"``) holding :func:`services.vectors.base.filter_terms` of the metadata. A filter is
  ``contains_any`` of one term per key, all ANDed: the embedded engine's semantics exactly.
- A collection's dimension and embedding model are fixed when it is created and recorded in its
  description (``dimension=384; model="..."``), since Weaviate's schema has no field for them. Every store
  and search reads the schema again (one REST call) rather than caching it, because ``wft reindex`` in
  another process may drop and recreate the collection with another model; a vector of another dimension,
  or an embedder of another model, is refused before anything is sent.
- ``insert_many`` reports failures per object: every failed object is raised, with its id and message.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from config import get_settings
from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput, PermanentError
from services.embeddings.base import Embedder
from services.resilience import circuit
from services.vectors.base import (
    CollectionInfo,
    FloatMatrix,
    PreparedItem,
    SearchResult,
    check_model,
    dimension_mismatch,
    embed_query,
    prepare_item,
    prepare_items,
    query_terms,
    resolve_vectors,
    score_from_cosine_distance,
    validate_collection_name,
    validate_search,
    validate_vector_id,
)

if TYPE_CHECKING:
    from weaviate import WeaviateClient

VECTOR_NAME = "default"
#: Objects per insert_many call: keeps each gRPC message well under Weaviate's default 10 MB limit.
INSERT_CHUNK = 1000
_DIMENSION_RE = re.compile(r"\bdimension=(\d+)\b")
_MODEL_RE = re.compile(r'\bmodel=("(?:[^"\\]|\\.)*")')
#: Per-object batch errors that a later attempt can get past (the rest are refused input).
_TRANSIENT_MARKERS = ("timeout", "deadline", "unavailable", "connection", "too many", "context canceled")


class WeaviateBatchError(PermanentError):
    """Weaviate refused one or more objects of a batch import; the message lists each id and reason."""


def weaviate_class_name(collection: str) -> str:
    """Our collection name as a Weaviate class name (first letter upper case)."""
    name = validate_collection_name(collection)
    return name[0].upper() + name[1:]


def object_uuid(collection: str, vector_id: str) -> str:
    """The deterministic UUID of our ``vector_id`` in ``collection`` (the '/' keeps the pair unambiguous)."""
    from weaviate.util import generate_uuid5

    return str(generate_uuid5(vector_id, f"{collection}/"))


class WeaviateVectorService:
    """Vectors in Weaviate. Builds its client on first use from ``WEAVIATE_URL``, ``WEAVIATE_GRPC_PORT`` and
    ``WEAVIATE_API_KEY`` unless one is given.

    Args:
        client: a connected ``weaviate.WeaviateClient`` (the service then leaves closing it to the caller).
        embedder: turns texts into vectors (default :func:`services.embeddings.get_embedder`).
    """

    def __init__(self, *, client: WeaviateClient | None = None, embedder: Embedder | None = None) -> None:
        self._client = client
        self._owns_client = client is None
        self._embedder = embedder
        self._lock = threading.Lock()

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The embedder, built on first use."""
        if self._embedder is None:
            from services.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    @property
    def client(self) -> WeaviateClient:
        """The Weaviate client, connected on first use.

        Raises:
            ConfigurationError: ``WEAVIATE_URL`` is not an http(s) URL.
            BackendUnavailable: the server does not answer.
        """
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> WeaviateClient:
        import weaviate
        from weaviate.classes.init import Auth
        from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError

        settings = get_settings()
        url = urlsplit(settings.weaviate_url)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ConfigurationError(f"WEAVIATE_URL must be an http(s) URL, got {settings.weaviate_url!r}")
        secure = url.scheme == "https"
        api_key = settings.weaviate_api_key
        try:
            return weaviate.connect_to_custom(
                http_host=url.hostname,
                http_port=url.port or (443 if secure else 80),
                http_secure=secure,
                grpc_host=url.hostname,
                grpc_port=settings.weaviate_grpc_port,
                grpc_secure=secure,
                auth_credentials=Auth.api_key(api_key.get_secret_value()) if api_key else None,
            )
        except UnexpectedStatusCodeError as exc:
            if exc.status_code in {401, 403}:
                raise ConfigurationError(
                    f"Weaviate at {settings.weaviate_url} refused the connection ({exc.status_code}): check "
                    f"WEAVIATE_API_KEY: {exc.message}"
                ) from exc
            raise BackendUnavailable(f"cannot connect to Weaviate at {settings.weaviate_url}: {exc}") from exc
        except WeaviateBaseError as exc:
            if "is not supported" in exc.message:
                # The client refuses servers older than it supports (1.27 for client 4.x): no retry helps.
                raise ConfigurationError(
                    f"Weaviate at {settings.weaviate_url} is too old for weaviate-client: {exc.message}"
                ) from exc
            raise BackendUnavailable(f"cannot connect to Weaviate at {settings.weaviate_url}: {exc}") from exc

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate the client's exceptions into our tree: refused input is permanent, the rest transient."""
        from weaviate.exceptions import (
            UnexpectedStatusCodeError,
            WeaviateBaseError,
            WeaviateInvalidInputError,
        )

        # The breaker sees the translated error: a transient one counts as the server failing.
        with circuit(f"weaviate@{get_settings().weaviate_url}"):
            try:
                yield
            except UnexpectedStatusCodeError as exc:
                status = exc.status_code
                if status in {401, 403}:
                    raise ConfigurationError(
                        f"Weaviate refused {action} ({status}): check WEAVIATE_API_KEY: {exc.message}"
                    ) from exc
                if status == 429 or status >= 500:
                    raise BackendUnavailable(f"Weaviate: {action} failed ({status}): {exc.message}") from exc
                raise InvalidInput(f"Weaviate refused {action} ({status}): {exc.message}") from exc
            except WeaviateInvalidInputError as exc:
                raise InvalidInput(f"Weaviate client refused {action}: {exc.message}") from exc
            except WeaviateBaseError as exc:
                raise BackendUnavailable(f"Weaviate: {action} failed: {exc.message}") from exc

    def close(self) -> None:
        """Close the client if this service built it."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    # --- collections ---------------------------------------------------------------------------------

    def collection_info(self, collection_name: str) -> CollectionInfo | None:
        """The dimension and embedding model the collection records, or None if it does not exist.

        Raises:
            ConfigurationError: the class exists but was not created by this service.
            BackendUnavailable: the server did not answer.
        """
        from weaviate.exceptions import UnexpectedStatusCodeError

        collection = validate_collection_name(collection_name)
        name = weaviate_class_name(collection)
        with self._errors(f"reading collection {name}"):
            try:
                description = self.client.collections.get(name).config.get().description or ""
            except UnexpectedStatusCodeError as exc:
                if exc.status_code == 404:
                    return None
                raise
        dimension = _DIMENSION_RE.search(description)
        if dimension is None:
            raise ConfigurationError(
                f"Weaviate collection {name} was not created by this service (its description "
                f"{description!r} records no dimension); use another collection name or delete it"
            )
        model = _MODEL_RE.search(description)
        return CollectionInfo(int(dimension.group(1)), json.loads(model.group(1)) if model else None)

    def _ensure_collection(self, collection: str, dimension: int) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        info = self.collection_info(collection)
        if info is None:
            name = weaviate_class_name(collection)
            properties = [
                Property(name="vector_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                Property(
                    name="text", data_type=DataType.TEXT, index_filterable=False, index_searchable=False
                ),
                Property(
                    name="metadata_json",
                    data_type=DataType.TEXT,
                    index_filterable=False,
                    index_searchable=False,
                ),
                Property(
                    name="filter_terms",
                    data_type=DataType.TEXT_ARRAY,
                    tokenization=Tokenization.FIELD,
                    index_filterable=True,
                    index_searchable=False,
                ),
            ]
            vector_config = Configure.Vectors.self_provided(
                name=VECTOR_NAME,
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
            )
            model = json.dumps(self.embedder.model_name, ensure_ascii=True)
            try:
                with self._errors(f"creating collection {name}"):
                    self.client.collections.create(
                        name,
                        description=f"workflow-tasks vectors; dimension={dimension}; model={model}",
                        properties=properties,
                        vector_config=vector_config,
                    )
            except InvalidInput:
                # Another worker may have created it first (Weaviate answers 422); that one is fine to use.
                if not self._collection_exists(collection):
                    raise
            info = self.collection_info(collection)
            if info is None:
                raise BackendUnavailable(f"Weaviate collection {name} vanished right after it was created")
        check_model(collection, info, self.embedder)
        if info.dimension != dimension:
            raise dimension_mismatch(collection, info.dimension, dimension)

    def _collection_exists(self, collection: str) -> bool:
        name = weaviate_class_name(collection)
        with self._errors(f"reading collection {name}"):
            return bool(self.client.collections.exists(name))

    def delete_collection(self, collection_name: str) -> bool:
        """Drop a collection and its objects; return True if it existed."""
        collection = validate_collection_name(collection_name)
        name = weaviate_class_name(collection)
        with self._errors(f"deleting collection {name}"):
            if not self.client.collections.exists(name):
                return False
            self.client.collections.delete(name)
        return True

    # --- writes --------------------------------------------------------------------------------------

    def store_vector(
        self, collection_name: str, text: str, metadata: Mapping[str, Any], vector_id: str | None = None
    ) -> str:
        """Store (or replace) one text; return its id. Raises as :meth:`store_vectors`."""
        collection = validate_collection_name(collection_name)
        item = prepare_item(collection, text, metadata, vector_id)
        self._insert(collection, [item], resolve_vectors(collection, [item], [None], self.embedder))
        return item.id

    def store_vectors(self, collection_name: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store (or replace) many items with batch imports; return their ids in order.

        Items as for the embedded engine: ``text``, optional ``metadata``, ``id``, ``vector``.

        Raises:
            InvalidInput: a bad item or a vector of another dimension than the collection's.
            EmbeddingModelMismatch: the collection holds vectors of another embedding model.
            WeaviateBatchError: Weaviate refused some objects (each id and reason named); others are stored.
            BackendUnavailable: the server did not answer, or failed objects for a transient reason.
        """
        collection = validate_collection_name(collection_name)
        prepared, given = prepare_items(collection, items)
        if not prepared:
            return []
        self._insert(collection, prepared, resolve_vectors(collection, prepared, given, self.embedder))
        return [item.id for item in prepared]

    def _insert(self, collection: str, items: Sequence[PreparedItem], vectors: FloatMatrix) -> None:
        from weaviate.classes.data import DataObject
        from weaviate.exceptions import WeaviateInsertManyAllFailedError

        self._ensure_collection(collection, int(vectors.shape[1]))
        name = weaviate_class_name(collection)
        # An id twice in one batch: the last wins, as in the embedded engine (Weaviate's order within one
        # batch is not specified, so send only the last).
        last = {item.id: n for n, item in enumerate(items)}
        order = sorted(last.values())
        handle = self.client.collections.get(name)
        failures: list[tuple[str, str]] = []  # (which objects, Weaviate's reason)
        for start in range(0, len(order), INSERT_CHUNK):
            chunk = order[start : start + INSERT_CHUNK]
            objects = [
                DataObject(
                    uuid=object_uuid(collection, items[n].id),
                    properties={
                        "vector_id": items[n].id,
                        "text": items[n].text,
                        "metadata_json": items[n].metadata_json,
                        "filter_terms": list(items[n].terms),
                    },
                    vector={VECTOR_NAME: vectors[n].tolist()},
                )
                for n in chunk
            ]
            with self._errors(f"importing {len(objects)} objects into {name}"):
                try:
                    result = handle.data.insert_many(objects)
                except WeaviateInsertManyAllFailedError as exc:
                    # The client raises instead of returning errors when every object failed.
                    failures.append((f"all {len(chunk)} objects from {items[chunk[0]].id!r}", exc.message))
                    self._raise_batch_failure(name, failures)
            failures.extend(
                (repr(items[chunk[i]].id), error.message) for i, error in sorted(result.errors.items())
            )
        if failures:
            self._raise_batch_failure(name, failures)

    def _raise_batch_failure(self, name: str, failures: list[tuple[str, str]]) -> NoReturn:
        listed = "; ".join(f"{which}: {reason}" for which, reason in failures[:10])
        text = listed + (f"; and {len(failures) - 10} more" if len(failures) > 10 else "")
        if any(marker in reason.lower() for _, reason in failures for marker in _TRANSIENT_MARKERS):
            raise BackendUnavailable(
                f"Weaviate failed {len(failures)} objects of a batch into {name}: {text}"
            )
        raise WeaviateBatchError(f"Weaviate refused {len(failures)} objects of a batch into {name}: {text}")

    def delete_vector(self, collection_name: str, vector_id: str) -> bool:
        """Delete one vector; return True if it existed."""
        collection = validate_collection_name(collection_name)
        item_id = validate_vector_id(collection, vector_id)
        name = weaviate_class_name(collection)
        with self._errors(f"deleting {item_id!r} from {name}"):
            if not self.client.collections.exists(name):
                return False
            return bool(self.client.collections.get(name).data.delete_by_id(object_uuid(collection, item_id)))

    # --- reads ---------------------------------------------------------------------------------------

    def count(self, collection_name: str) -> int:
        """Objects in the collection (0 if it does not exist)."""
        collection = validate_collection_name(collection_name)
        name = weaviate_class_name(collection)
        with self._errors(f"counting {name}"):
            if not self.client.collections.exists(name):
                return 0
            total = self.client.collections.get(name).aggregate.over_all(total_count=True).total_count
        return int(total or 0)

    def search_similar(
        self,
        collection_name: str,
        query_text: str,
        limit: int = 5,
        score_threshold: float = 0.7,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchResult]:
        """The stored texts most similar to ``query_text``, best first, as the embedded engine answers.

        Returns ``[{"id", "score", "text", "metadata"}]`` (score = cosine similarity = 1 - Weaviate's cosine
        distance); empty when the collection does not exist.

        Raises:
            InvalidInput: bad arguments, or a query embedding of another dimension than the collection's.
            EmbeddingModelMismatch: the collection holds vectors of another embedding model.
            BackendUnavailable: the server did not answer.
        """
        from weaviate.classes.query import Filter, MetadataQuery

        collection = validate_collection_name(collection_name)
        validate_search(collection, query_text, limit, score_threshold)
        terms = query_terms(collection, filters)
        info = self.collection_info(collection)
        if info is None:
            return []
        check_model(collection, info, self.embedder)
        query = embed_query(collection, query_text, self.embedder)
        if query.shape[0] != info.dimension:
            raise dimension_mismatch(collection, info.dimension, int(query.shape[0]), what="query embedding")
        where = (
            Filter.all_of([Filter.by_property("filter_terms").contains_any([term]) for term in terms])
            if terms
            else None
        )
        name = weaviate_class_name(collection)
        with self._errors(f"searching {name}"):
            response = self.client.collections.get(name).query.near_vector(
                near_vector=query.tolist(),
                target_vector=VECTOR_NAME,
                limit=limit,
                # Weaviate's ``distance`` is the largest distance returned: our threshold, converted.
                distance=1.0 - float(score_threshold),
                filters=where,
                return_metadata=MetadataQuery(distance=True),
                return_properties=["vector_id", "text", "metadata_json"],
            )
        results: list[SearchResult] = []
        for obj in response.objects:
            distance = obj.metadata.distance
            if distance is None:
                raise BackendUnavailable(f"Weaviate returned an object of {name} without its distance")
            score = score_from_cosine_distance(distance)
            if score < score_threshold:
                continue
            props = obj.properties
            results.append(
                {
                    "id": str(props["vector_id"]),
                    "score": score,
                    "text": str(props["text"]),
                    "metadata": json.loads(str(props["metadata_json"])),
                }
            )
        results.sort(key=lambda r: -r["score"])
        return results

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "backend": "weaviate", ...}``; reports rather than raises."""
        try:
            ready = bool(self.client.is_ready())
        except (BackendUnavailable, ConfigurationError) as exc:
            return {"status": "unhealthy", "backend": "weaviate", "error": str(exc)}
        return {
            "status": "healthy" if ready else "unhealthy",
            "backend": "weaviate",
            **({} if ready else {"error": "Weaviate is not ready"}),
        }
