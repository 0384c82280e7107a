"""A Weaviate protocol stand-in: the real ``weaviate-client`` v4 talks to it over the network.

No Weaviate server can be installed here, but the client ships the server's protocol: the gRPC service
definitions and generated servicer classes (``weaviate.proto.v1``) and the REST paths it calls. This module
serves both, in memory, on free ports of 127.0.0.1, so ``weaviate.connect_to_custom(...)`` connects to it as
to a server and the client's own transport, serialisation, version checks and error handling all run.

What it implements is what the client calls for ``services.vectors.weaviate_backend``, read from the client's
code (4.24) and Weaviate's documentation:

- At connect: ``GET /v1/.well-known/openid-configuration`` (404: no OIDC), ``GET /v1/meta`` (version and
  ``grpcMaxMessageSize``; the client refuses servers older than 1.27), the gRPC health check
  ``/grpc.health.v1.Health/Check``, and the client's best-effort "newer client released" lookup, which the
  fixture points at ``GET /pypi/weaviate-client/json`` here instead of the package index.
- REST: ``GET /v1/.well-known/ready`` and ``/live``; ``GET/POST /v1/schema``, ``GET/DELETE
  /v1/schema/{class}``; ``HEAD/DELETE /v1/objects/{class}/{uuid}``. A bad schema is answered 422 with
  Weaviate's ``{"error": [{"message": ...}]}``: invalid class or property names, unknown data types,
  tokenization on a non-text property, a vectorizer module that is not enabled, a class that exists.
- gRPC ``weaviate.v1.Weaviate``: ``Search`` (near_vector with distance/certainty, limit, offset, filters,
  returned properties and metadata), ``BatchObjects`` (per-object errors by index: undeclared property with
  auto-schema off, wrong types, unknown or missing named vectors, a vector length other than the index's,
  a tenant on a collection without multi-tenancy; the same UUID replaces the object) and ``Aggregate``
  (``objects_count``, optionally filtered). ``BatchDelete``, ``TenantsGet``, ``BatchReferences`` and
  ``BatchStream`` answer UNIMPLEMENTED, as does any search or option not listed (bm25, hybrid, group by ...):
  a call the stand-in does not implement fails loudly instead of pretending.
- Semantics: named self-provided vectors in an HNSW or flat index, searched exactly; cosine distance is
  ``1 - cos`` of the normalised vectors and certainty ``1 - distance / 2`` (cosine only); ``dot`` is ``-a.b``
  and ``l2-squared`` the squared Euclidean distance. Filters on text and text[] properties compare tokens
  of the property's tokenization (``word``, ``lowercase``, ``whitespace``, ``field``), on numbers and
  booleans values; a filter on a property with ``indexFilterable: false`` is an error, as in Weaviate.
- Optional API-key auth (``api_key=``): REST answers 401 and gRPC ``UNAUTHENTICATED`` without
  ``Authorization: Bearer <key>``.

Test hooks (the server runs in the test process, so tests reach it directly): ``object_error(class, uuid,
properties) -> str | None`` refuses chosen objects of a batch with that message; ``ready = False`` makes
readiness answer 503; ``calls`` counts requests by ``"REST GET /v1/meta"`` / ``"gRPC Search"``;
``stop()`` takes both ports down (a real outage: connections are refused).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid as uuid_package
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version as package_version
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

#: Weaviate's class-name rule (a GraphQL type name starting with a capital letter).
CLASS_NAME_RE = re.compile(r"^[A-Z][_0-9A-Za-z]{0,254}$")
PROPERTY_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
RESERVED_PROPERTIES = {"_additional", "_id", "id"}
DATA_TYPES = {
    "text", "text[]", "int", "int[]", "number", "number[]", "boolean", "boolean[]", "date", "date[]",
    "uuid", "uuid[]",
}  # fmt: skip
TOKENIZATIONS = {"word", "lowercase", "whitespace", "field"}
DISTANCES = {"cosine", "dot", "l2-squared"}
#: Weaviate's QUERY_DEFAULTS_LIMIT.
QUERY_DEFAULT_LIMIT = 10
GRPC_MAX_MESSAGE_SIZE = 104_858_000
_WORD_RE = re.compile(r"[0-9A-Za-z]+")

HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False,
    "cleanupIntervalSeconds": 300,
    "maxConnections": 32,
    "efConstruction": 128,
    "ef": -1,
    "dynamicEfMin": 100,
    "dynamicEfMax": 500,
    "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1_000_000_000_000,
    "flatSearchCutoff": 40_000,
    "distance": "cosine",
    "filterStrategy": "sweeping",
    "pq": {"enabled": False},
    "bq": {"enabled": False},
    "sq": {"enabled": False},
}
FLAT_DEFAULTS: dict[str, Any] = {
    "distance": "cosine",
    "vectorCacheMaxObjects": 1_000_000_000_000,
    "bq": {"enabled": False},
}


class SchemaError(Exception):
    """A schema request Weaviate answers with 422."""


class Unsupported(Exception):
    """A request for something the stand-in does not implement (answered 501 / UNIMPLEMENTED)."""


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
    created_ms: int
    updated_ms: int


@dataclass
class _Class:
    name: str
    schema: dict[str, Any]
    properties: dict[str, _Property]
    vectors: dict[str, str]  # named vector -> distance metric
    dimensions: dict[str, int] = field(default_factory=dict)
    objects: dict[uuid_package.UUID, _Stored] = field(default_factory=dict)


def capitalize(name: str) -> str:
    """Weaviate's class-name normalisation: the first letter upper case."""
    return name[:1].upper() + name[1:]


def _tokens(value: str, tokenization: str) -> set[str]:
    if tokenization == "field":
        return {value.strip()}
    if tokenization == "word":
        return {token.lower() for token in _WORD_RE.findall(value)}
    if tokenization == "lowercase":
        return set(value.lower().split())
    return set(value.split())  # whitespace


class WeaviateStandIn:
    """The in-memory server: REST on ``http_port``, gRPC on ``grpc_port``, both on 127.0.0.1.

    Args:
        version: what ``/v1/meta`` reports (the client picks its code paths by it).
        api_key: when set, every request must carry ``Authorization: Bearer <api_key>``.
        auto_schema: add undeclared properties on import (Weaviate's default) instead of refusing them.
    """

    def __init__(
        self, *, version: str = "1.32.0", api_key: str | None = None, auto_schema: bool = True
    ) -> None:
        self.version = version
        self.api_key = api_key
        self.auto_schema = auto_schema
        self.ready = True
        self.object_error: Callable[[str, uuid_package.UUID, dict[str, Any]], str | None] | None = None
        self.calls: Counter[str] = Counter()
        self._classes: dict[str, _Class] = {}
        self._lock = threading.RLock()
        self.http_port = 0
        self.grpc_port = 0
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self._connections: set[socket.socket] = set()

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> WeaviateStandIn:
        """Listen on two ports the system picks (or the ones of a previous start, after ``stop``): bound
        at once, so no other process can take them between choosing and listening."""
        handler = type("Handler", (_RestHandler,), {"stand_in": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), handler)
        self.http_port = self._http.server_address[1]
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="weaviate-rest", daemon=True).start()
        options = [
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_SIZE),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), server)
        health = grpc.unary_unary_rpc_method_handler(
            self._health,
            request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
            response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": health}),)
        )
        port = server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        if port == 0:
            raise RuntimeError(f"cannot listen for gRPC on 127.0.0.1:{self.grpc_port}")
        self.grpc_port = port
        server.start()
        self._grpc = server
        return self

    def stop(self) -> None:
        """Close both ports and every open connection (as a dead server would); the data stays, so
        ``start()`` again is a server restart."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        with self._lock:
            open_connections, self._connections = list(self._connections), set()
        for connection in open_connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None

    def reset(self) -> None:
        """Forget every class and hook (between tests sharing one server)."""
        with self._lock:
            self._classes.clear()
        self.object_error = None
        self.ready = True
        self.calls.clear()

    # --- shared by both protocols -----------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _health(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls["gRPC Health/Check"] += 1
        status = health_weaviate_pb2.WeaviateHealthCheckResponse
        return status(status=status.SERVING if self.ready else status.NOT_SERVING)

    def meta(self) -> dict[str, Any]:
        return {
            "hostname": "http://[::]:8080",
            "modules": {},
            "version": self.version,
            "grpcMaxMessageSize": GRPC_MAX_MESSAGE_SIZE,
        }

    def class_schema(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            cls = self._classes.get(capitalize(name))
            return json.loads(json.dumps(cls.schema)) if cls is not None else None

    def all_schemas(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(cls.schema)) for cls in self._classes.values()]

    def delete_class(self, name: str) -> None:
        with self._lock:
            self._classes.pop(capitalize(name), None)

    def object_count(self, name: str) -> int:
        with self._lock:
            cls = self._classes.get(capitalize(name))
            return len(cls.objects) if cls is not None else 0

    def create_class(self, body: Any) -> dict[str, Any]:
        """Validate a class as Weaviate's schema handler does, fill in its defaults and store it."""
        if not isinstance(body, dict) or not isinstance(body.get("class"), str):
            raise SchemaError("class is required")
        name = capitalize(body["class"])
        if not CLASS_NAME_RE.fullmatch(name):
            raise SchemaError(f"'{body['class']}' is not a valid class name")
        if (body.get("multiTenancyConfig") or {}).get("enabled"):
            raise Unsupported("multi-tenancy")
        if body.get("vectorizer") not in (None, "none"):
            raise SchemaError(f'vectorizer: no module with name "{body["vectorizer"]}" present')
        unsupported = {"moduleConfig", "vectorIndexConfig", "vectorIndexType"} & set(body)
        if unsupported:
            raise Unsupported(f"class settings {sorted(unsupported)}")
        properties: dict[str, _Property] = {}
        prop_schemas = []
        for prop in body.get("properties") or []:
            parsed, schema = self._property(prop)
            if parsed.name.lower() in {existing.lower() for existing in properties}:
                raise SchemaError(f'class "{name}": conflict for property "{parsed.name}": already in use')
            properties[parsed.name] = parsed
            prop_schemas.append(schema)
        vectors, vector_schemas = self._vector_config(body.get("vectorConfig"))
        schema: dict[str, Any] = {
            "class": name,
            **({"description": body["description"]} if body.get("description") else {}),
            "properties": prop_schemas,
            "invertedIndexConfig": {
                "bm25": {"b": 0.75, "k1": 1.2},
                "cleanupIntervalSeconds": 60,
                "stopwords": {"preset": "en", "additions": None, "removals": None},
                "usingBlockMaxWAND": True,
            },
            "multiTenancyConfig": {
                "enabled": False, "autoTenantCreation": False, "autoTenantActivation": False,
            },
            "replicationConfig": {
                "factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution",
            },
            "shardingConfig": {
                "virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1, "desiredVirtualCount": 128,
                "actualVirtualCount": 128, "key": "_id", "strategy": "hash", "function": "murmur3",
            },
            "vectorConfig": vector_schemas,
        }  # fmt: skip
        with self._lock:
            if name.lower() in {existing.lower() for existing in self._classes}:
                raise SchemaError(f'class name "{name}" already exists')
            self._classes[name] = _Class(name, schema, properties, vectors)
        return json.loads(json.dumps(schema))

    @staticmethod
    def _property(prop: Any) -> tuple[_Property, dict[str, Any]]:
        if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
            raise SchemaError("property name is required")
        name = prop["name"]
        if not PROPERTY_NAME_RE.fullmatch(name) or name in RESERVED_PROPERTIES:
            raise SchemaError(f"'{name}' is not a valid property name")
        data_types = prop.get("dataType")
        if not isinstance(data_types, list) or len(data_types) != 1:
            raise SchemaError(f"property '{name}': dataType must be a list of one type")
        data_type = data_types[0]
        if data_type[:1].isupper():
            raise Unsupported("cross-references")
        if data_type not in DATA_TYPES:
            raise SchemaError(f"property '{name}': data type \"{data_type}\" is not a valid data type")
        is_text = data_type in {"text", "text[]"}
        tokenization = prop.get("tokenization")
        if tokenization is not None and not is_text:
            raise SchemaError(f"Tokenization is not allowed for data type '{data_type}'")
        if is_text:
            tokenization = tokenization or "word"
            if tokenization not in TOKENIZATIONS:
                raise Unsupported(f"{tokenization!r} tokenization")
        searchable = prop.get("indexSearchable")
        if searchable and not is_text:
            raise SchemaError(
                f"`indexSearchable` is not allowed for other than text/text[] data types ({name})"
            )
        if prop.get("nestedProperties") or prop.get("moduleConfig"):
            raise Unsupported("nested properties and property module settings")
        filterable = prop.get("indexFilterable", True) is not False
        schema = {
            "name": name,
            "dataType": [data_type],
            **({"description": prop["description"]} if prop.get("description") else {}),
            "indexFilterable": filterable,
            "indexSearchable": bool(is_text and searchable is not False),
            "indexRangeFilters": bool(prop.get("indexRangeFilters", False)),
            **({"tokenization": tokenization} if is_text else {}),
        }
        return _Property(name, data_type, tokenization, filterable), schema

    @staticmethod
    def _vector_config(config: Any) -> tuple[dict[str, str], dict[str, Any]]:
        if not config:
            raise Unsupported("a class without named vectors (vectorConfig)")
        if not isinstance(config, dict):
            raise SchemaError("vectorConfig must be an object")
        vectors: dict[str, str] = {}
        schemas: dict[str, Any] = {}
        for vector_name, vector in config.items():
            vectorizer = vector.get("vectorizer") or {}
            if set(vectorizer) != {"none"}:
                module = next(iter(vectorizer), "")
                raise SchemaError(f'target vector "{vector_name}": no module with name "{module}" present')
            index_type = vector.get("vectorIndexType") or "hnsw"
            defaults = {"hnsw": HNSW_DEFAULTS, "flat": FLAT_DEFAULTS}.get(index_type)
            if defaults is None:
                raise Unsupported(f"vector index type {index_type!r}")
            index_config = {**defaults, **(vector.get("vectorIndexConfig") or {})}
            if index_config["distance"] not in DISTANCES:
                raise Unsupported(f"distance {index_config['distance']!r}")
            vectors[vector_name] = index_config["distance"]
            schemas[vector_name] = {
                "vectorizer": {"none": {}},
                "vectorIndexType": index_type,
                "vectorIndexConfig": index_config,
            }
        return vectors, schemas

    def delete_object(self, class_name: str, key: uuid_package.UUID) -> bool:
        with self._lock:
            cls = self._classes.get(capitalize(class_name))
            return cls is not None and cls.objects.pop(key, None) is not None

    def has_object(self, class_name: str, key: uuid_package.UUID) -> bool:
        with self._lock:
            cls = self._classes.get(capitalize(class_name))
            return cls is not None and key in cls.objects

    # --- batch import -------------------------------------------------------------------------------------

    def insert(self, obj: Any) -> str | None:
        """One object of a BatchObjects request; returns Weaviate's error for it, or None once stored."""
        name = capitalize(obj.collection)
        with self._lock:
            cls = self._classes.get(name)
            if cls is None:
                if not self.auto_schema:
                    return f'class "{name}" not found in schema (auto-schema is disabled)'
                raise Unsupported("creating classes by auto-schema")
            if obj.tenant:
                return f"class {name} has multi-tenancy disabled, but request was with tenant"
            try:
                key = uuid_package.UUID(obj.uuid)
            except ValueError:
                return f"invalid UUID {obj.uuid!r}"
            properties = _batch_properties(obj.properties) if obj.HasField("properties") else {}
            for prop_name, value in properties.items():
                prop = cls.properties.get(prop_name)
                if prop is None:
                    if not self.auto_schema:
                        return (
                            f"no such prop with name '{prop_name}' found in class '{name}' in the schema. "
                            "Check your schema files for which properties in this class are available"
                        )
                    prop = _infer_property(prop_name, value)
                    cls.properties[prop_name] = prop
                    cls.schema["properties"].append(
                        {"name": prop_name, "dataType": [prop.data_type], "indexFilterable": True,
                         "indexSearchable": prop.tokenization is not None, "indexRangeFilters": False,
                         **({"tokenization": prop.tokenization} if prop.tokenization else {})}
                    )  # fmt: skip
                problem = _type_problem(prop, value)
                if problem:
                    return f"invalid {prop.data_type} property '{prop_name}' on class '{name}': {problem}"
                if prop.data_type == "int" and isinstance(value, float):
                    properties[prop_name] = int(value)
            vectors: dict[str, np.ndarray] = {}
            if obj.vector_bytes or obj.vector:
                return f"collection {name} has named vectors {sorted(cls.vectors)}; got an unnamed vector"
            for vector in obj.vectors:
                if vector.name not in cls.vectors:
                    return f'target vector "{vector.name}" not found in class {name}'
                if vector.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                    raise Unsupported("multi-vectors")
                array = np.frombuffer(vector.vector_bytes, dtype="<f4").astype(np.float32)
                if array.size == 0:
                    return f'vector "{vector.name}" is empty'
                known = cls.dimensions.get(vector.name)
                if known is not None and known != array.size:
                    return (
                        f"new node has a vector with length {array.size}. "
                        f"Existing nodes have vectors with length {known}"
                    )
                vectors[vector.name] = array
            missing = sorted(set(cls.vectors) - set(vectors))
            if missing:
                return f"class {name} has no vectorizer: a vector for each of {missing} is required"
            hook = self.object_error
            message = hook(name, key, properties) if hook is not None else None
            if message is not None:
                return message
            for vector_name, array in vectors.items():
                cls.dimensions.setdefault(vector_name, int(array.size))
            now = int(time.time() * 1000)
            previous = cls.objects.get(key)
            # A batch import with an existing UUID replaces the whole object (PUT semantics).
            cls.objects[key] = _Stored(properties, vectors, previous.created_ms if previous else now, now)
        return None

    # --- search and aggregate -------------------------------------------------------------------------

    def search(self, request: Any) -> Any:
        name = capitalize(request.collection)
        for unsupported in ("group_by", "hybrid_search", "bm25_search", "near_object", "near_text",
                            "generative", "rerank", "sort_by", "after", "autocut"):  # fmt: skip
            if _is_set(request, unsupported):
                raise Unsupported(f"search with {unsupported}")
        if request.tenant:
            raise GrpcError(
                grpc.StatusCode.UNKNOWN,
                f"class {name} has multi-tenancy disabled, but request was with tenant",
            )
        started = time.perf_counter()
        with self._lock:
            cls = self._classes.get(name)
            if cls is None:
                raise GrpcError(grpc.StatusCode.UNKNOWN, f"could not find class {name} in schema")
            hits = self._near_vector(cls, request)
            # No properties request at all means every property, as does return_all_nonref_properties.
            names = (
                list(cls.properties)
                if not request.HasField("properties") or request.properties.return_all_nonref_properties
                else list(request.properties.non_ref_properties)
            )
            for prop_name in names:
                if prop_name not in cls.properties:
                    raise GrpcError(
                        grpc.StatusCode.UNKNOWN, f"no such prop with name '{prop_name}' in class {name}"
                    )
            results = [
                search_get_pb2.SearchResult(
                    properties=search_get_pb2.PropertiesResult(
                        target_collection=name,
                        non_ref_props=_result_properties(stored, names),
                    ),
                    metadata=_result_metadata(request.metadata, key, stored, distance, metric, target),
                )
                for distance, key, stored, metric, target in hits
            ]
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)

    def _near_vector(
        self, cls: _Class, request: Any
    ) -> list[tuple[float | None, uuid_package.UUID, _Stored, str, str]]:
        limit = request.limit or QUERY_DEFAULT_LIMIT
        offset = request.offset
        filters = request.filters if request.HasField("filters") else None
        if not request.HasField("near_vector"):
            selected = [
                (None, key, stored, "", "")
                for key, stored in cls.objects.items()
                if filters is None or _matches(cls, stored, key, filters)
            ]
            return selected[offset : offset + limit]
        near = request.near_vector
        targets = list(near.targets.target_vectors) or list(near.target_vectors)
        if not targets:
            if len(cls.vectors) != 1:
                raise GrpcError(
                    grpc.StatusCode.UNKNOWN,
                    f"class {cls.name} has multiple vectors, but no target vectors were provided",
                )
            targets = list(cls.vectors)
        if len(targets) != 1:
            raise Unsupported("multi-target vector search")
        target = targets[0]
        if target not in cls.vectors:
            raise GrpcError(
                grpc.StatusCode.UNKNOWN, f'target vector "{target}" not found in class {cls.name}'
            )
        if near.vectors:
            if near.vectors[0].type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise Unsupported("multi-vector search")
            query = np.frombuffer(near.vectors[0].vector_bytes, dtype="<f4")
        elif near.vector_bytes:
            query = np.frombuffer(near.vector_bytes, dtype="<f4")
        else:
            query = np.asarray(list(near.vector), dtype=np.float32)
        known = cls.dimensions.get(target)
        if known is not None and known != query.size:
            raise GrpcError(
                grpc.StatusCode.UNKNOWN,
                f"explorer: get class: vector search: object vector search at index {cls.name.lower()}: "
                f"vector lengths don't match: {query.size} vs {known}",
            )
        metric = cls.vectors[target]
        has_certainty = near.HasField("certainty")
        if has_certainty and metric != "cosine":
            raise GrpcError(
                grpc.StatusCode.UNKNOWN,
                "can't compute and return certainty when vector index is not configured with cosine distance",
            )
        hits = []
        for key, stored in cls.objects.items():
            vector = stored.vectors.get(target)
            if vector is None or (filters is not None and not _matches(cls, stored, key, filters)):
                continue
            distance = _distance(metric, vector, query)
            if near.HasField("distance") and distance > near.distance:
                continue
            if has_certainty and 1.0 - distance / 2.0 < near.certainty:
                continue
            hits.append((distance, key, stored, metric, target))
        hits.sort(key=lambda hit: hit[0])
        return hits[offset : offset + limit]

    def aggregate(self, request: Any) -> Any:
        name = capitalize(request.collection)
        if request.aggregations or _is_set(request, "group_by") or _is_set(request, "near_vector"):
            raise Unsupported("aggregations other than objects_count")
        started = time.perf_counter()
        with self._lock:
            cls = self._classes.get(name)
            if cls is None:
                raise GrpcError(grpc.StatusCode.UNKNOWN, f"could not find class {name} in schema")
            filters = request.filters if request.HasField("filters") else None
            count = sum(
                1
                for key, stored in cls.objects.items()
                if filters is None or _matches(cls, stored, key, filters)
            )
        single = aggregate_pb2.AggregateReply.Single(objects_count=count if request.objects_count else None)
        return aggregate_pb2.AggregateReply(took=time.perf_counter() - started, single_result=single)


class GrpcError(Exception):
    """An error the gRPC servicer answers with ``code`` and ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _is_set(message: Any, name: str) -> bool:
    try:
        return bool(message.HasField(name))
    except ValueError:
        return bool(getattr(message, name))


# --- values --------------------------------------------------------------------------------------------


def _struct_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [_struct_value(v) for v in value.list_value.values]
    raise Unsupported("object properties")


def _batch_properties(props: Any) -> dict[str, Any]:
    if props.single_target_ref_props or props.multi_target_ref_props:
        raise Unsupported("cross-references")
    if props.object_properties or props.object_array_properties:
        raise Unsupported("object properties")
    out: dict[str, Any] = {
        key: _struct_value(value) for key, value in props.non_ref_properties.fields.items()
    }
    for item in props.text_array_properties:
        out[item.prop_name] = list(item.values)
    for item in props.int_array_properties:
        out[item.prop_name] = list(item.values)
    for item in props.boolean_array_properties:
        out[item.prop_name] = list(item.values)
    for item in props.number_array_properties:
        values = item.values_bytes
        out[item.prop_name] = (
            list(struct.unpack(f"<{len(values) // 8}d", values)) if values else list(item.values)
        )
    for prop_name in props.empty_list_props:
        out[prop_name] = []
    return out


def _infer_property(name: str, value: Any) -> _Property:
    # Weaviate's auto-schema: strings are text (word tokenization), numbers number, booleans boolean.
    sample = value[0] if isinstance(value, list) and value else value
    suffix = "[]" if isinstance(value, list) else ""
    if isinstance(sample, bool):
        return _Property(name, "boolean" + suffix, None, True)
    if isinstance(sample, int | float):
        return _Property(name, "number" + suffix, None, True)
    return _Property(name, "text" + suffix, "word", True)


def _type_problem(prop: _Property, value: Any) -> str | None:
    scalar: dict[str, tuple[type, ...]] = {
        "text": (str,), "int": (int, float), "number": (int, float), "boolean": (bool,),
        "date": (str,), "uuid": (str,),
    }  # fmt: skip
    if value is None:
        return None
    base = prop.data_type.removesuffix("[]")
    if prop.data_type.endswith("[]"):
        if not isinstance(value, list):
            return f"not a list, but {type(value).__name__}"
        problems = [_scalar_problem(base, scalar[base], v) for v in value]
        return next((p for p in problems if p), None)
    return _scalar_problem(base, scalar[base], value)


def _scalar_problem(data_type: str, types: tuple[type, ...], value: Any) -> str | None:
    if isinstance(value, bool) and data_type != "boolean":
        return f"not a {data_type}, but bool"
    if not isinstance(value, types):
        return f"not a {data_type}, but {type(value).__name__}"
    if data_type == "int" and isinstance(value, float) and not value.is_integer():
        return f"not an int, but a number with a fraction ({value})"
    return None


def _value(value: Any) -> properties_pb2.Value:
    if value is None:
        return properties_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return properties_pb2.Value(int_value=value)
    if isinstance(value, float):
        return properties_pb2.Value(number_value=value)
    if isinstance(value, str):
        return properties_pb2.Value(text_value=value)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return properties_pb2.Value(
                list_value=properties_pb2.ListValue(text_values=properties_pb2.TextValues(values=value))
            )
        if all(isinstance(v, bool) for v in value):
            return properties_pb2.Value(
                list_value=properties_pb2.ListValue(bool_values=properties_pb2.BooleanValues(values=value))
            )
        if all(isinstance(v, int) for v in value):
            packed = struct.pack(f"<{len(value)}q", *value)
            return properties_pb2.Value(
                list_value=properties_pb2.ListValue(int_values=properties_pb2.IntValues(values=packed))
            )
        packed = struct.pack(f"<{len(value)}d", *value)
        return properties_pb2.Value(
            list_value=properties_pb2.ListValue(number_values=properties_pb2.NumberValues(values=packed))
        )
    raise Unsupported(f"returning a {type(value).__name__} property")


def _result_properties(stored: _Stored, names: list[str]) -> properties_pb2.Properties:
    return properties_pb2.Properties(
        fields={name: _value(stored.properties[name]) for name in names if name in stored.properties}
    )


def _result_metadata(
    wanted: Any, key: uuid_package.UUID, stored: _Stored, distance: float | None, metric: str, target: str
) -> search_get_pb2.MetadataResult:
    meta = search_get_pb2.MetadataResult(id=str(key), id_as_bytes=key.bytes)
    if wanted.distance and distance is not None:
        meta.distance, meta.distance_present = distance, True
    if wanted.certainty and distance is not None and metric == "cosine":
        meta.certainty, meta.certainty_present = 1.0 - distance / 2.0, True
    if wanted.creation_time_unix:
        meta.creation_time_unix, meta.creation_time_unix_present = stored.created_ms, True
    if wanted.last_update_time_unix:
        meta.last_update_time_unix, meta.last_update_time_unix_present = stored.updated_ms, True
    if wanted.vector or wanted.vectors:
        names = list(wanted.vectors) or list(stored.vectors)
        for name in names:
            if name in stored.vectors:
                meta.vectors.append(
                    base_pb2.Vectors(
                        name=name,
                        vector_bytes=stored.vectors[name].astype("<f4").tobytes(),
                        type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32,
                    )
                )
    return meta


def _distance(metric: str, stored: np.ndarray, query: np.ndarray) -> float:
    if metric == "cosine":
        denominator = float(np.linalg.norm(stored) * np.linalg.norm(query))
        return 1.0 - float(np.dot(stored, query)) / denominator if denominator else 1.0
    if metric == "dot":
        return -float(np.dot(stored, query))
    return float(np.sum((stored - query) ** 2))


# --- filters -------------------------------------------------------------------------------------------

_Op = base_pb2.Filters


def _filter_values(node: Any) -> list[Any]:
    kind = node.WhichOneof("test_value")
    if kind is None:
        return []
    raw = getattr(node, kind)
    if kind.endswith("_array"):
        return list(raw.values)
    return [raw]


def _matches(cls: _Class, stored: _Stored, key: uuid_package.UUID, node: Any) -> bool:
    op = node.operator
    if op == _Op.OPERATOR_AND:
        return all(_matches(cls, stored, key, child) for child in node.filters)
    if op == _Op.OPERATOR_OR:
        return any(_matches(cls, stored, key, child) for child in node.filters)
    if op == _Op.OPERATOR_NOT:
        return not _matches(cls, stored, key, node.filters[0])
    if node.HasField("target"):
        if node.target.WhichOneof("target") != "property":
            raise Unsupported("reference and count filters")
        path = node.target.property
    elif len(node.on) == 1:
        path = node.on[0]
    else:
        raise Unsupported("filters on reference paths")
    wanted = _filter_values(node)
    if path == "_id":
        ids = {uuid_package.UUID(str(v)) for v in wanted}
        hit = key in ids
        return hit if op in {_Op.OPERATOR_EQUAL, _Op.OPERATOR_CONTAINS_ANY} else not hit
    prop = cls.properties.get(path)
    if prop is None:
        raise GrpcError(
            grpc.StatusCode.UNKNOWN,
            f"no such prop with name '{path}' found in class '{cls.name}' in the schema",
        )
    if not prop.filterable:
        raise GrpcError(
            grpc.StatusCode.UNKNOWN,
            f"Filtering by property '{prop.name}' requires inverted index. Is `indexFilterable` option of "
            f"property '{prop.name}' enabled? Set it to `true` or leave empty",
        )
    value = stored.properties.get(prop.name)
    if op == _Op.OPERATOR_IS_NULL:
        return (value is None or value == []) == bool(wanted[0])
    elements = value if isinstance(value, list) else ([] if value is None else [value])
    if prop.tokenization is not None:
        if not all(isinstance(v, str) for v in wanted):
            raise GrpcError(
                grpc.StatusCode.UNKNOWN, f"filter on text property '{prop.name}' needs text values"
            )
        have: set[str] = set()
        for element in elements:
            have |= _tokens(element, prop.tokenization)
        # The inverted index holds tokens: a value matches when all of its tokens are present.
        per_value = [_tokens(v, prop.tokenization) for v in wanted]
        if op == _Op.OPERATOR_EQUAL:
            return bool(elements) and per_value[0] <= have
        if op == _Op.OPERATOR_NOT_EQUAL:
            return not (bool(elements) and per_value[0] <= have)
        if op == _Op.OPERATOR_CONTAINS_ANY:
            return any(tokens <= have for tokens in per_value)
        if op == _Op.OPERATOR_CONTAINS_ALL:
            return all(tokens <= have for tokens in per_value)
        if op == _Op.OPERATOR_CONTAINS_NONE:
            return not any(tokens <= have for tokens in per_value)
        raise Unsupported(f"operator {_Op.Operator.Name(op)} on text properties")
    comparisons: dict[int, Callable[[Any, Any], bool]] = {
        _Op.OPERATOR_EQUAL: lambda a, b: a == b,
        _Op.OPERATOR_NOT_EQUAL: lambda a, b: a != b,
        _Op.OPERATOR_LESS_THAN: lambda a, b: a < b,
        _Op.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
        _Op.OPERATOR_GREATER_THAN: lambda a, b: a > b,
        _Op.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
    }
    if op in comparisons:
        return any(comparisons[op](element, wanted[0]) for element in elements)
    if op == _Op.OPERATOR_CONTAINS_ANY:
        return any(v in elements for v in wanted)
    if op == _Op.OPERATOR_CONTAINS_ALL:
        return all(v in elements for v in wanted)
    if op == _Op.OPERATOR_CONTAINS_NONE:
        return not any(v in elements for v in wanted)
    raise Unsupported(f"operator {_Op.Operator.Name(op)} on {prop.data_type} properties")


# --- gRPC ----------------------------------------------------------------------------------------------


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):  # type: ignore[misc]
    """Weaviate's gRPC service over the stand-in; the methods not defined here keep the generated base
    class's answer, UNIMPLEMENTED."""

    def __init__(self, stand_in: WeaviateStandIn) -> None:
        self.stand_in = stand_in

    def _call(self, method: str, context: grpc.ServicerContext, run: Callable[[], Any]) -> Any:
        self.stand_in.calls[f"gRPC {method}"] += 1
        metadata = dict(context.invocation_metadata())
        if not self.stand_in.authorized(metadata.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthorized: invalid or missing api key")
        try:
            return run()
        except GrpcError as exc:
            context.abort(exc.code, exc.details)
        except Unsupported as exc:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the Weaviate stand-in does not implement {exc}")

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("Search", context, lambda: self.stand_in.search(request))

    def BatchObjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run() -> Any:
            started = time.perf_counter()
            errors = []
            for index, obj in enumerate(request.objects):
                message = self.stand_in.insert(obj)
                if message is not None:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=message))
            return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=errors)

        return self._call("BatchObjects", context, run)

    def Aggregate(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("Aggregate", context, lambda: self.stand_in.aggregate(request))


# --- REST ----------------------------------------------------------------------------------------------


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stand_in: WeaviateStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr would drown the test output

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without NODELAY, Nagle holds the body for 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.stand_in._lock:
            self.stand_in._connections.add(self.connection)

    def finish(self) -> None:
        with self.stand_in._lock:
            self.stand_in._connections.discard(self.connection)
        with suppress(OSError):
            super().finish()

    def _reply(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, {"error": [{"message": message}]})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        stand_in = self.stand_in
        stand_in.calls[f"REST {self.command} {re.sub(r'/[0-9a-f-]{36}$', '/{uuid}', path)}"] += 1
        body = self._body() if self.command in {"POST", "PUT", "PATCH"} else None
        if path == "/pypi/weaviate-client/json":
            # What the client's "is there a newer client?" lookup reads; answered with the installed version.
            self._reply(200, {"info": {"version": package_version("weaviate-client")}})
            return
        if path == "/v1/.well-known/openid-configuration":
            self._error(404, "OIDC provider not configured")
            return
        if path == "/v1/.well-known/live":
            self._reply(200)
            return
        if path == "/v1/.well-known/ready":
            self._reply(200 if stand_in.ready else 503)
            return
        if not stand_in.authorized(self.headers.get("Authorization")):
            self._reply(
                401,
                {
                    "code": 401,
                    "message": "anonymous access not enabled, please provide an auth scheme such as OIDC",
                },
            )
            return
        if path == "/v1/meta" and self.command == "GET":
            self._reply(200, stand_in.meta())
            return
        parts = path.strip("/").split("/")
        try:
            if parts[:2] == ["v1", "schema"]:
                self._schema(parts[2:], body)
                return
            if parts[:2] == ["v1", "objects"] and len(parts) == 4:
                self._object(parts[2], parts[3])
                return
        except SchemaError as exc:
            self._error(422, str(exc))
            return
        except Unsupported as exc:
            self._error(501, f"the Weaviate stand-in does not implement {exc}")
            return
        self._error(
            404 if self.command in {"GET", "HEAD", "DELETE"} else 405, f"{self.command} {path} is not served"
        )

    def _schema(self, rest: list[str], body: Any) -> None:
        stand_in = self.stand_in
        if not rest and self.command == "GET":
            self._reply(200, {"classes": stand_in.all_schemas()})
        elif not rest and self.command == "POST":
            self._reply(200, stand_in.create_class(body))
        elif len(rest) == 1 and self.command == "GET":
            schema = stand_in.class_schema(rest[0])
            if schema is None:
                self._reply(404)
            else:
                self._reply(200, schema)
        elif len(rest) == 1 and self.command == "DELETE":
            stand_in.delete_class(rest[0])  # Weaviate answers 200 whether or not the class existed
            self._reply(200)
        else:
            raise Unsupported(f"{self.command} /v1/schema/{'/'.join(rest)}")

    def _object(self, class_name: str, raw_uuid: str) -> None:
        try:
            key = uuid_package.UUID(raw_uuid)
        except ValueError:
            self._error(422, f"invalid UUID {raw_uuid!r}")
            return
        if self.command == "DELETE":
            self._reply(204 if self.stand_in.delete_object(class_name, key) else 404)
        elif self.command == "HEAD":
            self._reply(204 if self.stand_in.has_object(class_name, key) else 404)
        else:
            raise Unsupported(f"{self.command} /v1/objects")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route


# --- fixtures ------------------------------------------------------------------------------------------


def point_version_check_at(monkeypatch: pytest.MonkeyPatch, stand_in: WeaviateStandIn) -> None:
    """Send the client's best-effort "newer client released?" lookup (made at every connect) to the stand-in,
    so tests never reach out to the package index."""
    import weaviate.connect.v4

    monkeypatch.setattr(
        weaviate.connect.v4, "PYPI_PACKAGE_URL", f"{stand_in.http_url}/pypi/weaviate-client/json"
    )


@pytest.fixture(scope="session")
def weaviate_stand_in() -> Iterator[WeaviateStandIn]:
    """One stand-in for the session; :func:`weaviate_server` empties it around each test."""
    stand_in = WeaviateStandIn().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def weaviate_server(
    weaviate_stand_in: WeaviateStandIn, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WeaviateStandIn]:
    """The session's stand-in, empty, with settings pointing ``WEAVIATE_URL``/``WEAVIATE_GRPC_PORT`` at it."""
    from config import reload_settings

    weaviate_stand_in.reset()
    point_version_check_at(monkeypatch, weaviate_stand_in)
    monkeypatch.setenv("WEAVIATE_URL", weaviate_stand_in.http_url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(weaviate_stand_in.grpc_port))
    reload_settings()
    yield weaviate_stand_in
    monkeypatch.undo()
    reload_settings()
    with suppress(Exception):
        weaviate_stand_in.reset()
