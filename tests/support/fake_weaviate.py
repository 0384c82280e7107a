"""A stand-in for the ``weaviate-client`` v4 surface that ``services.vectors.weaviate_backend`` uses.

No Weaviate server can run here, so this is as close as we can get without one. It is built from the
client's own pieces wherever the client does work before the wire:

- ``collections.create`` runs the client's schema builder (``_CollectionConfigCreate(...)._to_dict()``) and
  then interprets the JSON a server would receive: class-name capitalisation and validity, property data
  types, ``tokenization``, ``indexFilterable``, named vectors with their distance metric.
- ``data.insert_many`` validates each object with the client's ``BatchObject`` (UUID, vector conversion),
  applies Weaviate's per-object rules (declared properties and types with auto-schema off, named vectors,
  one vector length per index, the same UUID overwrites) and answers the way the client's gRPC batch path
  does: a ``BatchObjectReturn`` with an ``errors`` dict keyed by input index, or
  ``WeaviateInsertManyAllFailedError`` when every object failed.
- ``query.near_vector`` computes Weaviate's distances (cosine: ``1 - cos`` of the normalised vectors; dot:
  ``-dot``; l2-squared), honours ``distance``/``certainty``/``limit``/``offset``, evaluates the client's
  ``Filter`` objects against the schema's tokenization (word, lowercase, whitespace, field) and returns
  the client's ``QueryReturn``/``Object``/``MetadataReturn``.
- ``aggregate.over_all(total_count=True)`` returns the client's ``AggregateReturn``.

Failure injection for tests: ``client.down = True`` makes every call raise ``WeaviateConnectionError`` (and
``is_ready()`` answer False, as the real client does); ``client.batch_error = fn(uuid, properties) -> str |
None`` makes the "server" refuse chosen objects with that message.

Whatever the adapter does not use raises ``NotImplementedError`` rather than pretending.
"""

from __future__ import annotations

import re
import threading
import time
import uuid as uuid_package
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from weaviate.collections.classes.aggregate import AggregateReturn
from weaviate.collections.classes.batch import BatchObject, BatchObjectReturn, ErrorObject
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.collections.classes.data import DataObject
from weaviate.collections.classes.filters import _FilterAnd, _FilterNot, _FilterOr, _FilterValue, _Operator
from weaviate.collections.classes.grpc import MetadataQuery
from weaviate.collections.classes.internal import MetadataReturn, Object, QueryReturn
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateInsertManyAllFailedError,
    WeaviateInvalidInputError,
    WeaviateQueryError,
)
from weaviate.util import _capitalize_first_letter, get_valid_uuid

#: Weaviate's class-name rule (GraphQL type names starting with a capital letter).
CLASS_NAME_RE = re.compile(r"^[A-Z][_0-9A-Za-z]{0,254}$")
PROPERTY_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
RESERVED_PROPERTIES = {"_additional", "_id", "id"}
QUERY_DEFAULT_LIMIT = 10
_WORD_RE = re.compile(r"[0-9A-Za-z]+")


def _status_error(status: int, method: str, path: str, message: str) -> UnexpectedStatusCodeError:
    request = httpx.Request(method, f"http://fake-weaviate{path}")
    response = httpx.Response(status, json={"error": [{"message": message}]}, request=request)
    return UnexpectedStatusCodeError(f"{method} {path}", response)


def _tokens(value: str, tokenization: str) -> set[str]:
    if tokenization == "field":
        return {value.strip()}
    if tokenization == "word":
        return {token.lower() for token in _WORD_RE.findall(value)}
    if tokenization == "lowercase":
        return set(value.lower().split())
    if tokenization == "whitespace":
        return set(value.split())
    raise NotImplementedError(f"fake Weaviate does not implement {tokenization!r} tokenization")


@dataclass
class _Property:
    name: str
    data_type: str
    tokenization: str | None
    filterable: bool


@dataclass
class _Stored:
    properties: dict[str, Any]
    vectors: dict[str, np.ndarray]
    created: float
    updated: float


@dataclass
class _Class:
    name: str
    description: str | None
    properties: dict[str, _Property]
    vectors: dict[str, str]  # named vector -> distance metric
    schema: dict[str, Any]
    dimensions: dict[str, int] = field(default_factory=dict)
    objects: dict[uuid_package.UUID, _Stored] = field(default_factory=dict)


@dataclass
class FakeCollectionConfig:
    """The fields of the client's ``CollectionConfig`` that the adapter reads, plus the raw schema."""

    name: str
    description: str | None
    properties: list[_Property]
    vector_config: dict[str, str]
    schema: dict[str, Any]


class FakeWeaviateClient:
    """A ``WeaviateClient``-shaped object over numpy. Thread-safe (one lock, like a single server)."""

    def __init__(self) -> None:
        self.down = False
        self.closed = False
        self.batch_error: Callable[[uuid_package.UUID, dict[str, Any]], str | None] | None = None
        self._classes: dict[str, _Class] = {}
        self._lock = threading.RLock()
        self.collections = _Collections(self)
        self.calls: list[str] = []

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.closed:
            raise WeaviateClosedClientError()
        if self.down:
            raise WeaviateConnectionError(f"fake Weaviate is down ({call})")

    def is_ready(self) -> bool:
        return not (self.down or self.closed)

    def is_connected(self) -> bool:
        return not self.closed

    def connect(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Collections:
    def __init__(self, client: FakeWeaviateClient) -> None:
        self._client = client

    def create(
        self,
        name: str,
        *,
        description: str | None = None,
        properties: Sequence[Any] | None = None,
        vector_config: Any = None,
        **unsupported: Any,
    ) -> _Collection:
        self._client._check("collections.create")
        used = {key: value for key, value in unsupported.items() if value is not None}
        if used:
            raise NotImplementedError(f"fake Weaviate does not implement create({', '.join(used)}=...)")
        try:
            schema = _CollectionConfigCreate(
                name=name, description=description, properties=properties, vector_config=vector_config
            )._to_dict(emit_default_vector_index_type=False)
        except ValueError as exc:
            raise WeaviateInvalidInputError(f"Invalid collection config create parameters: {exc}") from exc
        class_name = schema["class"]
        with self._client._lock:
            if not CLASS_NAME_RE.fullmatch(class_name):
                raise _status_error(422, "POST", "/v1/schema", f"'{class_name}' is not a valid class name")
            if class_name.lower() in {existing.lower() for existing in self._client._classes}:
                raise _status_error(422, "POST", "/v1/schema", f"class name {class_name!r} already exists")
            props: dict[str, _Property] = {}
            for prop in schema.get("properties", []):
                prop_name = prop["name"]
                if not PROPERTY_NAME_RE.fullmatch(prop_name) or prop_name in RESERVED_PROPERTIES:
                    raise _status_error(
                        422, "POST", "/v1/schema", f"'{prop_name}' is not a valid property name"
                    )
                data_type = prop["dataType"][0]
                tokenization = prop.get("tokenization")
                if data_type in {"text", "text[]"}:
                    tokenization = tokenization or "word"
                elif tokenization is not None:
                    raise _status_error(
                        422, "POST", "/v1/schema", f"tokenization is not allowed for {data_type} property"
                    )
                props[prop_name] = _Property(
                    prop_name, data_type, tokenization, prop.get("indexFilterable", True)
                )
            vectors: dict[str, str] = {}
            for vector_name, config in (schema.get("vectorConfig") or {}).items():
                if "none" not in config.get("vectorizer", {}):
                    raise NotImplementedError("fake Weaviate has no vectorizer modules: use self_provided()")
                vectors[vector_name] = (config.get("vectorIndexConfig") or {}).get("distance", "cosine")
            if not vectors:
                raise NotImplementedError("fake Weaviate implements named vectors (vector_config) only")
            self._client._classes[class_name] = _Class(class_name, description, props, vectors, schema)
        return _Collection(self._client, class_name)

    def exists(self, name: str) -> bool:
        self._client._check("collections.exists")
        return _capitalize_first_letter(name) in self._client._classes

    def get(self, name: str) -> _Collection:
        # Like the real client: a handle only, no request; a missing class fails on use.
        return _Collection(self._client, _capitalize_first_letter(name))

    use = get

    def delete(self, name: str) -> None:
        self._client._check("collections.delete")
        with self._client._lock:
            self._client._classes.pop(_capitalize_first_letter(name), None)

    def list_all(self) -> dict[str, FakeCollectionConfig]:
        self._client._check("collections.list_all")
        return {name: _Collection(self._client, name).config.get() for name in self._client._classes}


class _Collection:
    def __init__(self, client: FakeWeaviateClient, name: str) -> None:
        self._client = client
        self.name = name
        self.config = _Config(self)
        self.data = _Data(self)
        self.query = _Query(self)
        self.aggregate = _Aggregate(self)

    def _class(self, protocol: str) -> _Class:
        cls = self._client._classes.get(self.name)
        if cls is None:
            if protocol == "REST":
                raise _status_error(404, "GET", f"/v1/schema/{self.name}", f"class {self.name!r} not found")
            raise WeaviateQueryError(f"could not find class {self.name} in schema", protocol)
        return cls


class _Config:
    def __init__(self, collection: _Collection) -> None:
        self._collection = collection

    def get(self) -> FakeCollectionConfig:
        self._collection._client._check("config.get")
        cls = self._collection._class("REST")
        return FakeCollectionConfig(
            cls.name, cls.description, list(cls.properties.values()), cls.vectors, cls.schema
        )


class _Data:
    def __init__(self, collection: _Collection) -> None:
        self._collection = collection

    def insert_many(self, objects: Sequence[Any]) -> BatchObjectReturn:
        client = self._collection._client
        client._check("data.insert_many")
        start = time.time()
        batch: list[BatchObject] = []
        for index, obj in enumerate(objects):
            if isinstance(obj, DataObject):
                if obj.references is not None:
                    raise NotImplementedError("fake Weaviate does not implement references")
                batch.append(
                    BatchObject(
                        collection=self._collection.name,
                        properties=obj.properties,
                        uuid=obj.uuid,
                        vector=obj.vector,
                        index=index,
                    )
                )
            else:
                batch.append(BatchObject(collection=self._collection.name, properties=obj, index=index))
        errors: dict[int, str] = {}
        with client._lock:
            for obj in batch:
                message = self._server_insert(obj)
                if message is not None:
                    errors[obj.index] = message
        if errors and len(errors) == len(batch):
            raise WeaviateInsertManyAllFailedError(
                "Here is the set of all errors: {}".format("\n".join(set(errors.values())))
            )
        uuids: dict[int, uuid_package.UUID] = {}
        error_objects: dict[int, ErrorObject] = {}
        for obj in batch:
            assert obj.uuid is not None
            if obj.index in errors:
                error_objects[obj.index] = ErrorObject(errors[obj.index], obj, original_uuid=obj.uuid)
            else:
                uuids[obj.index] = uuid_package.UUID(str(obj.uuid))
        return BatchObjectReturn(
            uuids=uuids,
            errors=error_objects,
            has_errors=bool(errors),
            _all_responses=[error_objects.get(i) or uuids[i] for i in range(len(batch))],
            elapsed_seconds=time.time() - start,
        )

    def _server_insert(self, obj: BatchObject) -> str | None:
        """Weaviate's per-object checks; returns the error message, or None once stored."""
        cls = self._collection._client._classes.get(self._collection.name)
        if cls is None:
            return f"class {self._collection.name!r} not found in schema (auto-schema is disabled)"
        key = uuid_package.UUID(str(obj.uuid))
        properties = dict(obj.properties or {})
        for prop_name, value in properties.items():
            prop = cls.properties.get(prop_name)
            if prop is None:
                return (
                    f"no such prop with name '{prop_name}' found in class '{cls.name}' in the schema. "
                    "Check your schema files for which properties in this class are available"
                )
            problem = _type_problem(prop, value)
            if problem:
                return f"invalid {prop.data_type} property '{prop_name}' on class '{cls.name}': {problem}"
        if obj.vector is None:
            return (
                f"class {cls.name} has no vectorizer: a vector for each of {sorted(cls.vectors)} is required"
            )
        if not isinstance(obj.vector, dict):
            return f"collection {cls.name} has named vectors {sorted(cls.vectors)}; got an unnamed vector"
        vectors: dict[str, np.ndarray] = {}
        for vector_name, raw in obj.vector.items():
            if vector_name not in cls.vectors:
                return f"target vector {vector_name!r} not found in class {cls.name}"
            vector = np.asarray(raw, dtype=np.float32)
            if vector.ndim != 1 or vector.size == 0:
                return f"vector {vector_name!r} must be a non-empty flat list of numbers"
            known = cls.dimensions.get(vector_name)
            if known is not None and known != vector.size:
                return (
                    f"new node has a vector with length {vector.size}. "
                    f"Existing nodes have vectors with length {known}"
                )
            vectors[vector_name] = vector
        hook = self._collection._client.batch_error
        message = hook(key, properties) if hook is not None else None
        if message is not None:
            return message
        for vector_name, vector in vectors.items():
            cls.dimensions.setdefault(vector_name, int(vector.size))
        now = time.time()
        previous = cls.objects.get(key)
        # A batch import with an existing UUID replaces the whole object (PUT semantics).
        cls.objects[key] = _Stored(properties, vectors, previous.created if previous else now, now)
        return None

    def delete_by_id(self, uuid: Any) -> bool:
        client = self._collection._client
        client._check("data.delete_by_id")
        key = uuid_package.UUID(get_valid_uuid(uuid))
        with client._lock:
            cls = client._classes.get(self._collection.name)
            if cls is None:
                return False  # REST DELETE answers 404, which the client reports as False
            return cls.objects.pop(key, None) is not None

    def exists(self, uuid: Any) -> bool:
        client = self._collection._client
        client._check("data.exists")
        cls = client._classes.get(self._collection.name)
        return cls is not None and uuid_package.UUID(get_valid_uuid(uuid)) in cls.objects


def _type_problem(prop: _Property, value: Any) -> str | None:
    scalar = {
        "text": (str,),
        "int": (int,),
        "number": (int, float),
        "boolean": (bool,),
    }
    if value is None:
        return None
    if prop.data_type in scalar:
        ok = isinstance(value, scalar[prop.data_type]) and not (
            prop.data_type in {"int", "number"} and isinstance(value, bool)
        )
        return None if ok else f"not a {prop.data_type}, but {type(value).__name__}"
    if prop.data_type.endswith("[]") and prop.data_type[:-2] in scalar:
        if not isinstance(value, list):
            return f"not a list, but {type(value).__name__}"
        element = _Property(prop.name, prop.data_type[:-2], prop.tokenization, prop.filterable)
        problems = [p for p in (_type_problem(element, v) for v in value) if p]
        return problems[0] if problems else None
    raise NotImplementedError(f"fake Weaviate does not implement {prop.data_type} properties")


def _distance(metric: str, stored: np.ndarray, query: np.ndarray) -> float:
    if metric == "cosine":
        return float(1.0 - np.dot(stored / np.linalg.norm(stored), query / np.linalg.norm(query)))
    if metric == "dot":
        return float(-np.dot(stored, query))
    if metric == "l2-squared":
        return float(np.sum((stored - query) ** 2))
    raise NotImplementedError(f"fake Weaviate does not implement the {metric!r} distance")


class _Query:
    def __init__(self, collection: _Collection) -> None:
        self._collection = collection

    def near_vector(
        self,
        near_vector: Any,
        *,
        certainty: float | None = None,
        distance: float | None = None,
        limit: int | None = None,
        offset: int | None = None,
        filters: Any = None,
        target_vector: str | None = None,
        include_vector: bool = False,
        return_metadata: Any = None,
        return_properties: Sequence[str] | None = None,
        **unsupported: Any,
    ) -> QueryReturn[Any, Any]:
        client = self._collection._client
        client._check("query.near_vector")
        used = {key for key, value in unsupported.items() if value is not None}
        if used:
            raise NotImplementedError(
                f"fake Weaviate does not implement near_vector({', '.join(sorted(used))}=...)"
            )
        if certainty is not None and distance is not None:
            raise WeaviateInvalidInputError("Cannot define both 'certainty' and 'distance'")
        with client._lock:
            cls = self._collection._class("GRPC")
            if target_vector is None:
                if len(cls.vectors) != 1:
                    raise WeaviateQueryError(
                        f"class {cls.name} has multiple vectors, but no target vectors were provided", "GRPC"
                    )
                target_vector = next(iter(cls.vectors))
            if target_vector not in cls.vectors:
                raise WeaviateQueryError(
                    f"target vector {target_vector!r} not found in class {cls.name}", "GRPC"
                )
            if isinstance(near_vector, dict):
                near_vector = near_vector[target_vector]
            query = np.asarray(near_vector, dtype=np.float32)
            known = cls.dimensions.get(target_vector)
            if known is not None and known != query.size:
                raise WeaviateQueryError(
                    f"vector search: knn search: vector lengths don't match: {query.size} vs {known}", "GRPC"
                )
            metric = cls.vectors[target_vector]
            if certainty is not None and metric != "cosine":
                raise WeaviateQueryError(
                    "can't compute and return certainty when vector index is not cosine", "GRPC"
                )
            hits = []
            for key, stored in cls.objects.items():
                vector = stored.vectors.get(target_vector)
                if vector is None or (filters is not None and not _matches(cls, key, stored, filters)):
                    continue
                dist = _distance(metric, vector, query)
                if distance is not None and dist > distance:
                    continue
                if certainty is not None and 1.0 - dist / 2.0 < certainty:
                    continue
                hits.append((dist, key, stored))
            hits.sort(key=lambda hit: hit[0])
            start = offset or 0
            hits = hits[start : start + (limit if limit is not None else QUERY_DEFAULT_LIMIT)]
            names = list(cls.properties) if return_properties is None else list(return_properties)
            for prop_name in names:
                if prop_name not in cls.properties:
                    raise WeaviateQueryError(
                        f"no such prop with name '{prop_name}' in class {cls.name}", "GRPC"
                    )
            want_distance = _wants_distance(return_metadata)
            objects = [
                Object(
                    uuid=key,
                    metadata=MetadataReturn(distance=dist if want_distance else None),
                    properties={name: stored.properties.get(name) for name in names},
                    references=None,
                    vector={target_vector: stored.vectors[target_vector].tolist()} if include_vector else {},
                    collection=cls.name,
                )
                for dist, key, stored in hits
            ]
        return QueryReturn(objects=objects)


def _wants_distance(return_metadata: Any) -> bool:
    if return_metadata is None:
        return False
    if isinstance(return_metadata, MetadataQuery):
        return bool(return_metadata.distance)
    if isinstance(return_metadata, list | tuple):
        return "distance" in return_metadata
    raise WeaviateInvalidInputError(
        f"return_metadata must be a MetadataQuery or a list, got {return_metadata!r}"
    )


def _matches(cls: _Class, key: uuid_package.UUID, stored: _Stored, node: Any) -> bool:
    if isinstance(node, _FilterAnd):
        return all(_matches(cls, key, stored, child) for child in node.filters)
    if isinstance(node, _FilterOr):
        return any(_matches(cls, key, stored, child) for child in node.filters)
    if isinstance(node, _FilterNot):
        return not _matches(cls, key, stored, node.filters[0])
    if not isinstance(node, _FilterValue):
        raise WeaviateInvalidInputError(f"not a filter: {node!r}")
    if not isinstance(node.target, str):
        raise NotImplementedError("fake Weaviate does not implement reference or count filters")
    if node.target == "_id":
        wanted = node.value if isinstance(node.value, list) else [node.value]
        hit = key in {uuid_package.UUID(get_valid_uuid(v)) for v in wanted}
        return hit != (node.operator in {_Operator.NOT_EQUAL, _Operator.CONTAINS_NONE})
    prop = cls.properties.get(node.target)
    if prop is None:
        raise WeaviateQueryError(
            f"no such prop with name '{node.target}' found in class '{cls.name}'", "GRPC"
        )
    if not prop.filterable:
        raise WeaviateQueryError(
            f"Filtering by property '{prop.name}' requires inverted index. Is `indexFilterable` option of "
            f"property '{prop.name}' enabled? Set it to `true` or leave empty",
            "GRPC",
        )
    value = stored.properties.get(prop.name)
    if node.operator == _Operator.IS_NULL:
        return (value is None or value == []) == bool(node.value)
    if prop.data_type in {"text", "text[]"}:
        return _text_matches(prop, value, node)
    return _plain_matches(prop, value, node)


def _text_matches(prop: _Property, value: Any, node: _FilterValue) -> bool:
    assert prop.tokenization is not None
    wanted = node.value if isinstance(node.value, list) else [node.value]
    if not all(isinstance(v, str) for v in wanted):
        raise WeaviateQueryError(f"filter on text property '{prop.name}' needs string values", "GRPC")
    elements = value if isinstance(value, list) else ([] if value is None else [value])
    have: set[str] = set()
    for element in elements:
        have |= _tokens(element, prop.tokenization)
    # The inverted index holds tokens: a value matches when its tokens are present.
    per_value = [_tokens(v, prop.tokenization) for v in wanted]
    op = node.operator
    if op == _Operator.EQUAL:
        return bool(elements) and per_value[0] <= have
    if op == _Operator.NOT_EQUAL:
        return not (bool(elements) and per_value[0] <= have)
    if op == _Operator.CONTAINS_ANY:
        return any(tokens & have for tokens in per_value)
    if op == _Operator.CONTAINS_ALL:
        return all(tokens <= have for tokens in per_value)
    if op == _Operator.CONTAINS_NONE:
        return not any(tokens & have for tokens in per_value)
    raise NotImplementedError(f"fake Weaviate does not implement {op.value} on text properties")


def _plain_matches(prop: _Property, value: Any, node: _FilterValue) -> bool:
    elements = value if isinstance(value, list) else ([] if value is None else [value])
    wanted = node.value if isinstance(node.value, list) else [node.value]
    op = node.operator
    comparisons: dict[_Operator, Callable[[Any, Any], bool]] = {
        _Operator.EQUAL: lambda a, b: a == b,
        _Operator.NOT_EQUAL: lambda a, b: a != b,
        _Operator.LESS_THAN: lambda a, b: a < b,
        _Operator.LESS_THAN_EQUAL: lambda a, b: a <= b,
        _Operator.GREATER_THAN: lambda a, b: a > b,
        _Operator.GREATER_THAN_EQUAL: lambda a, b: a >= b,
    }
    if op in comparisons:
        return any(comparisons[op](element, wanted[0]) for element in elements)
    if op == _Operator.CONTAINS_ANY:
        return any(v in elements for v in wanted)
    if op == _Operator.CONTAINS_ALL:
        return all(v in elements for v in wanted)
    if op == _Operator.CONTAINS_NONE:
        return not any(v in elements for v in wanted)
    raise NotImplementedError(f"fake Weaviate does not implement {op.value} on {prop.data_type} properties")


class _Aggregate:
    def __init__(self, collection: _Collection) -> None:
        self._collection = collection

    def over_all(
        self,
        *,
        filters: Any = None,
        group_by: Any = None,
        total_count: bool = True,
        return_metrics: Any = None,
    ) -> AggregateReturn:
        client = self._collection._client
        client._check("aggregate.over_all")
        if group_by is not None or return_metrics is not None:
            raise NotImplementedError("fake Weaviate implements total_count aggregation only")
        with client._lock:
            cls = self._collection._class("GRPC")
            n = sum(
                1
                for key, stored in cls.objects.items()
                if filters is None or _matches(cls, key, stored, filters)
            )
        return AggregateReturn(properties={}, total_count=n if total_count else None)
