"""The embedded vector engine: vectors in one SQLite file, searched through an in-memory index per process.

Writers (any number of worker processes) append to ``<data_dir>/vectors/vectors.db`` in WAL mode; each write
transaction is ``BEGIN IMMEDIATE``, so writers queue behind SQLite's lock (``busy_timeout``) rather than fail.

Every upsert and delete takes the next value of its collection's sequence (``collections.last_seq``) inside
that write transaction, so sequence order is commit order. A reading process keeps, per collection, the
vectors in a numpy matrix and remembers the last sequence it has applied; before each search it reads only
the rows and deletions with a larger sequence. A replaced or deleted id leaves a dead slot (a tombstone) in
the matrix, masked out of every search and compacted away once they pile up.

Small collections are searched exactly (one matrix product). From ``vector_hnsw_threshold`` live vectors on,
a faiss HNSW index answers instead (built in a background thread; exact search answers until it is ready,
see :meth:`EmbeddedVectorService.wait_for_index`); it over-fetches when tombstones or filters would thin its
top k, and a selective filter is answered by exact search over its candidates instead.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from config import get_settings
from fabric.errors import BackendUnavailable, ConfigurationError
from services.embeddings.base import Embedder
from services.vectors.base import (
    CollectionInfo,
    FloatMatrix,
    PreparedItem,
    SearchResult,
    check_model,
    dimension_mismatch,
    embed_query,
    filter_terms,
    prepare_item,
    prepare_items,
    query_terms,
    resolve_vectors,
    validate_collection_name,
    validate_search,
    validate_vector_id,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    dimension INTEGER NOT NULL,
    generation TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    embedder TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    terms TEXT NOT NULL,  -- the filter terms, newline-separated, so readers need not re-derive them
    vector BLOB NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS vectors_by_seq ON vectors (collection, seq);
CREATE TABLE IF NOT EXISTS deletions (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS deletions_by_seq ON deletions (collection, seq);
"""

logger = logging.getLogger(__name__)

#: Rows past the HNSW graph are searched exactly (cheap: 2,048 x 64 floats is ~0.1 ms) and added to the
#: graph in one go once this many have gathered: adding costs ~0.5 ms a row, paid by one search.
_HNSW_TAIL = 2048

#: How far a filtered HNSW search may over-fetch before exact search over the candidates is cheaper.
_MAX_OVERFETCH = 4096


@dataclass
class _Index:
    """One collection as this process last saw it."""

    generation: str
    dimension: int
    model: str | None = None
    last_seq: int = 0
    size: int = 0  # slots used in ``vectors`` (live + dead)
    vectors: FloatMatrix = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    alive: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadata_json: list[str] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    # term -> slots holding it, ascending and unique by construction (slots only grow, terms are a set)
    postings: dict[str, list[int]] = field(default_factory=dict)
    posting_arrays: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    hnsw: Any = None  # faiss.IndexHNSWFlat over slots 0..hnsw.ntotal-1, or None
    layout: int = 0  # bumped by every compaction: an HNSW graph built on an older layout is stale
    building: bool = False

    @property
    def live(self) -> int:
        return len(self.slot_of)

    @property
    def dead(self) -> int:
        return self.size - self.live

    def reserve(self, extra: int) -> None:
        needed = self.size + extra
        if needed <= self.vectors.shape[0]:
            return
        capacity = max(needed, 2 * self.vectors.shape[0], 1024)
        grown = np.zeros((capacity, self.dimension), dtype=np.float32)
        grown[: self.size] = self.vectors[: self.size]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.size] = self.alive[: self.size]
        self.vectors, self.alive = grown, alive

    def kill(self, item_id: str) -> None:
        slot = self.slot_of.pop(item_id, None)
        if slot is not None:
            self.alive[slot] = False

    def append(self, rows: list[tuple[str, str, str, str, bytes]]) -> None:
        """Append rows ``(id, text, metadata_json, terms, vector_bytes)``; earlier slots of those ids die."""
        if not rows:
            return
        self.reserve(len(rows))
        start = self.size
        matrix = np.frombuffer(b"".join(row[4] for row in rows), dtype=np.float32).reshape(len(rows), -1)
        self.vectors[start : start + len(rows)] = matrix
        for offset, (item_id, text, metadata_json, terms, _) in enumerate(rows):
            slot = start + offset
            self.kill(item_id)
            self.slot_of[item_id] = slot
            self.alive[slot] = True
            self.ids.append(item_id)
            self.texts.append(text)
            self.metadata_json.append(metadata_json)
            for term in terms.split(_TERM_SEPARATOR) if terms else ():
                self.postings.setdefault(term, []).append(slot)
        self.size += len(rows)


#: Terms are JSON-spelled, so a raw newline never occurs inside one.
_TERM_SEPARATOR = "\n"


def _terms_of(metadata_json: str) -> str:
    return _TERM_SEPARATOR.join(filter_terms(json.loads(metadata_json)))


class EmbeddedVectorService:
    """Vectors in SQLite plus an in-memory exact/HNSW index. Safe to use from several threads and processes.

    Args:
        path: the SQLite file (default ``settings.data_dir / "vectors" / "vectors.db"``).
        embedder: turns texts into vectors (default :func:`services.embeddings.get_embedder`).
        hnsw_threshold, hnsw_m, hnsw_ef_construction, hnsw_ef_search, busy_timeout_ms: default from settings.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        embedder: Embedder | None = None,
        hnsw_threshold: int | None = None,
        hnsw_m: int | None = None,
        hnsw_ef_construction: int | None = None,
        hnsw_ef_search: int | None = None,
        busy_timeout_ms: int | None = None,
        build_in_background: bool = True,
    ) -> None:
        settings = get_settings()
        self.path = path if path is not None else settings.data_dir / "vectors" / "vectors.db"
        self._embedder = embedder
        self.hnsw_threshold = hnsw_threshold if hnsw_threshold is not None else settings.vector_hnsw_threshold
        self.hnsw_m = hnsw_m if hnsw_m is not None else settings.vector_hnsw_m
        self.hnsw_ef_construction = (
            hnsw_ef_construction if hnsw_ef_construction is not None else settings.vector_hnsw_ef_construction
        )
        self.hnsw_ef_search = hnsw_ef_search if hnsw_ef_search is not None else settings.vector_hnsw_ef_search
        self.busy_timeout_ms = (
            busy_timeout_ms if busy_timeout_ms is not None else settings.vector_busy_timeout_ms
        )
        self._local = threading.local()
        self._lock = threading.RLock()  # guards the in-memory indexes
        self._indexes: dict[str, _Index] = {}
        self._schema_ready = False
        self.build_in_background = build_in_background
        self._builds: dict[str, threading.Thread] = {}
        self._pid = os.getpid()

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The embedder, built on first use."""
        if self._embedder is None:
            from services.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 connections must not cross threads, and a forked
        # child must never reuse its parent's file descriptors.
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == pid:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_ready:
                # Each statement is idempotent, so processes starting together may all run them.
                conn.executescript(_SCHEMA)
                self._schema_ready = True
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the vector store at {self.path} (DATA_DIR): {exc}"
            ) from exc
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"cannot open the vector store {self.path}: {exc}") from exc
        self._local.conn, self._local.pid = conn, pid
        return conn

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so the sequence numbers handed out inside are in commit
        # order and a concurrent writer waits (busy_timeout) rather than failing half way.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"vector store {self.path} is locked or unavailable: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"commit to vector store {self.path} failed: {exc}") from exc

    @contextmanager
    def _sqlite_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"vector store {self.path}: {action} failed: {exc}") from exc

    # --- writes --------------------------------------------------------------------------------------

    def store_vector(
        self, collection_name: str, text: str, metadata: Mapping[str, Any], vector_id: str | None = None
    ) -> str:
        """Store (or replace) one text with its metadata; return its id (new when ``vector_id`` is None).

        Raises:
            InvalidInput: a bad name, text, metadata or id, or an embedding of another dimension than the
                collection's.
            EmbeddingModelMismatch: the collection holds vectors of another embedding model.
            BackendUnavailable: the SQLite file cannot be written.
        """
        collection = validate_collection_name(collection_name)
        item = prepare_item(collection, text, metadata, vector_id)
        vectors = resolve_vectors(collection, [item], [None], self.embedder)
        self._upsert(collection, [item], vectors)
        return item.id

    def store_vectors(self, collection_name: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store (or replace) many items in one transaction; return their ids in order.

        Each item: ``{"text": str, "metadata": dict (optional), "id": str (optional), "vector": list of
        floats (optional; when absent the text is embedded)}``. Texts are embedded in one batch. An id given
        twice stores its last item.

        Raises:
            InvalidInput: a bad item (its index is named) or a vector of another dimension than the
                collection's; nothing is stored then.
            EmbeddingModelMismatch: the collection holds vectors of another embedding model (precomputed
                vectors are taken to be the service embedder's); nothing is stored then.
            BackendUnavailable: the SQLite file cannot be written.
        """
        collection = validate_collection_name(collection_name)
        prepared, given = prepare_items(collection, items)
        if not prepared:
            return []
        vectors = resolve_vectors(collection, prepared, given, self.embedder)
        self._upsert(collection, prepared, vectors)
        return [item.id for item in prepared]

    def _upsert(self, collection: str, items: Sequence[PreparedItem], vectors: FloatMatrix) -> None:
        conn = self._connection()
        dimension = int(vectors.shape[1])
        model = self.embedder.model_name
        with self._sqlite_errors(f"storing {len(items)} vectors in {collection!r}"), self._write(conn):
            conn.execute(
                "INSERT OR IGNORE INTO collections"
                " (name, dimension, generation, last_seq, embedder, created_at) VALUES (?, ?, ?, 0, ?, ?)",
                (collection, dimension, uuid.uuid4().hex, model, time.time()),
            )
            fixed, recorded = conn.execute(
                "SELECT dimension, embedder FROM collections WHERE name = ?", (collection,)
            ).fetchone()
            # The model first: a changed model is the likelier cause of a changed dimension, and its error
            # says what to do about both.
            check_model(collection, CollectionInfo(fixed, recorded), self.embedder)
            if fixed != dimension:
                raise dimension_mismatch(collection, fixed, dimension)
            if recorded is None:
                # A collection from before models were recorded: its vectors have this dimension, so they
                # are taken to be this model's from now on (which is what searching them assumed anyway).
                conn.execute("UPDATE collections SET embedder = ? WHERE name = ?", (model, collection))
            (last,) = conn.execute(
                "UPDATE collections SET last_seq = last_seq + ? WHERE name = ? RETURNING last_seq",
                (len(items), collection),
            ).fetchone()
            first = last - len(items) + 1
            conn.executemany(
                "INSERT INTO vectors (collection, id, seq, text, metadata, terms, vector)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (collection, id) DO UPDATE SET seq = excluded.seq, text = excluded.text,"
                " metadata = excluded.metadata, terms = excluded.terms, vector = excluded.vector",
                (
                    (
                        collection,
                        item.id,
                        first + n,
                        item.text,
                        item.metadata_json,
                        _TERM_SEPARATOR.join(item.terms),
                        vectors[n].tobytes(),
                    )
                    for n, item in enumerate(items)
                ),
            )
            # A re-stored id is alive again: its old tombstone must not delete it for a fresh reader.
            if conn.execute("SELECT 1 FROM deletions WHERE collection = ? LIMIT 1", (collection,)).fetchone():
                conn.executemany(
                    "DELETE FROM deletions WHERE collection = ? AND id = ?",
                    ((collection, item.id) for item in items),
                )

    def delete_vector(self, collection_name: str, vector_id: str) -> bool:
        """Delete one vector; return True if it existed.

        Raises:
            InvalidInput: a bad collection name or id.
            BackendUnavailable: the SQLite file cannot be written.
        """
        collection = validate_collection_name(collection_name)
        item_id = validate_vector_id(collection, vector_id)
        conn = self._connection()
        with self._sqlite_errors(f"deleting {item_id!r} from {collection!r}"), self._write(conn):
            deleted = conn.execute(
                "DELETE FROM vectors WHERE collection = ? AND id = ?", (collection, item_id)
            ).rowcount
            if not deleted:
                return False
            (seq,) = conn.execute(
                "UPDATE collections SET last_seq = last_seq + 1 WHERE name = ? RETURNING last_seq",
                (collection,),
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO deletions (collection, id, seq) VALUES (?, ?, ?)",
                (collection, item_id, seq),
            )
        return True

    def delete_collection(self, collection_name: str) -> bool:
        """Drop a collection and its vectors (its dimension is free again); return True if it existed."""
        collection = validate_collection_name(collection_name)
        conn = self._connection()
        with self._sqlite_errors(f"deleting collection {collection!r}"), self._write(conn):
            existed = conn.execute("DELETE FROM collections WHERE name = ?", (collection,)).rowcount > 0
            conn.execute("DELETE FROM vectors WHERE collection = ?", (collection,))
            conn.execute("DELETE FROM deletions WHERE collection = ?", (collection,))
        with self._lock:
            self._indexes.pop(collection, None)
        return existed

    # --- reads ---------------------------------------------------------------------------------------

    def count(self, collection_name: str) -> int:
        """Live vectors in the collection (0 if it does not exist)."""
        collection = validate_collection_name(collection_name)
        conn = self._connection()
        with self._sqlite_errors(f"counting {collection!r}"):
            (n,) = conn.execute("SELECT COUNT(*) FROM vectors WHERE collection = ?", (collection,)).fetchone()
        return int(n)

    def dimension(self, collection_name: str) -> int | None:
        """The collection's fixed dimension, or None if it does not exist."""
        info = self.collection_info(collection_name)
        return None if info is None else info.dimension

    def collection_info(self, collection_name: str) -> CollectionInfo | None:
        """The dimension and embedding model the collection records, or None if it does not exist."""
        collection = validate_collection_name(collection_name)
        conn = self._connection()
        with self._sqlite_errors(f"reading {collection!r}"):
            row = conn.execute(
                "SELECT dimension, embedder FROM collections WHERE name = ?", (collection,)
            ).fetchone()
        return None if row is None else CollectionInfo(int(row[0]), row[1])

    def search_similar(
        self,
        collection_name: str,
        query_text: str,
        limit: int = 5,
        score_threshold: float = 0.7,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchResult]:
        """The stored texts most similar to ``query_text``, best first.

        Args:
            limit: at most this many results (1..1000).
            score_threshold: only results whose cosine similarity is at least this.
            filters: ``{key: value}``, all must hold; a scalar metadata value must equal ``value``, a list
                value must contain it.

        Returns:
            ``[{"id", "score", "text", "metadata"}]``; empty when the collection does not exist.

        Raises:
            InvalidInput: bad arguments, or a query embedding of another dimension than the collection's.
            EmbeddingModelMismatch: the collection holds vectors of another embedding model.
            BackendUnavailable: the SQLite file cannot be read.
        """
        collection = validate_collection_name(collection_name)
        validate_search(collection, query_text, limit, score_threshold)
        terms = query_terms(collection, filters)
        query = embed_query(collection, query_text, self.embedder)
        with self._lock:
            index = self._catch_up(collection)
            if index is None:
                return []
            check_model(collection, CollectionInfo(index.dimension, index.model), self.embedder)
            if query.shape[0] != index.dimension:
                raise dimension_mismatch(collection, index.dimension, query.shape[0], what="query embedding")
            slots, scores = self._top(index, query, limit, float(score_threshold), terms)
            return [
                {
                    "id": index.ids[slot],
                    "score": float(score),
                    "text": index.texts[slot],
                    "metadata": json.loads(index.metadata_json[slot]),
                }
                for slot, score in zip(slots, scores, strict=True)
            ]

    def search_vector(
        self, collection_name: str, vector: npt.ArrayLike, limit: int = 10, score_threshold: float = -1.0
    ) -> list[tuple[str, float]]:
        """``(id, score)`` of the vectors nearest to a precomputed ``vector``, best first (benchmarks)."""
        collection = validate_collection_name(collection_name)
        with self._lock:
            index = self._catch_up(collection)
            if index is None:
                return []
            query = np.asarray(vector, dtype=np.float32)
            if query.shape != (index.dimension,):
                raise dimension_mismatch(collection, index.dimension, int(query.size), what="query vector")
            query = query / np.linalg.norm(query)
            slots, scores = self._top(index, query, limit, score_threshold, ())
            return [(index.ids[s], float(v)) for s, v in zip(slots, scores, strict=True)]

    def exact_search_vector(self, collection_name: str, vector: npt.ArrayLike, limit: int = 10) -> list[str]:
        """Ids of the exact nearest neighbours by brute force, never HNSW (the benchmark's ground truth)."""
        collection = validate_collection_name(collection_name)
        with self._lock:
            index = self._catch_up(collection)
            if index is None:
                return []
            query = np.asarray(vector, dtype=np.float32)
            slots, _ = self._exact(index, query / np.linalg.norm(query), None, limit, -1.0)
            return [index.ids[s] for s in slots]

    def _top(
        self,
        index: _Index,
        query: npt.NDArray[np.float32],
        limit: int,
        threshold: float,
        terms: tuple[str, ...],
    ) -> tuple[list[int], list[float]]:
        candidates = self._candidates(index, terms) if terms else None
        if candidates is not None and candidates.size == 0:
            return [], []
        use_hnsw = index.hnsw is not None and (candidates is None or candidates.size > self.hnsw_threshold)
        if not use_hnsw:
            return self._exact(index, query, candidates, limit, threshold)
        return self._approximate(index, query, candidates, limit, threshold)

    def _candidates(self, index: _Index, terms: tuple[str, ...]) -> npt.NDArray[np.int64]:
        lists = []
        for term in terms:
            posting = index.postings.get(term)
            if not posting:
                return np.zeros(0, dtype=np.int64)
            # Convert only the slots appended since the last query with this term.
            cached = index.posting_arrays.get(term)
            if cached is None or cached.shape[0] != len(posting):
                done = 0 if cached is None else cached.shape[0]
                tail = np.asarray(posting[done:], dtype=np.int64)
                cached = tail if cached is None else np.concatenate([cached, tail])
                index.posting_arrays[term] = cached
            lists.append(cached)
        lists.sort(key=len)
        slots = lists[0]
        for other in lists[1:]:
            slots = np.intersect1d(slots, other, assume_unique=True)
        return slots[index.alive[slots]]

    def _exact(
        self,
        index: _Index,
        query: npt.NDArray[np.float32],
        candidates: npt.NDArray[np.int64] | None,
        limit: int,
        threshold: float,
    ) -> tuple[list[int], list[float]]:
        if candidates is None:
            scores = index.vectors[: index.size] @ query
            scores[~index.alive[: index.size]] = -np.inf
            slots = np.arange(index.size)
        else:
            scores = index.vectors[candidates] @ query
            slots = candidates
        k = min(limit, scores.shape[0])
        if k == 0:
            return [], []
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
        top = top[np.argsort(-scores[top], kind="stable")]
        keep = scores[top] >= threshold
        return [int(s) for s in slots[top][keep]], [float(v) for v in scores[top][keep]]

    def _approximate(
        self,
        index: _Index,
        query: npt.NDArray[np.float32],
        candidates: npt.NDArray[np.int64] | None,
        limit: int,
        threshold: float,
    ) -> tuple[list[int], list[float]]:
        hnsw = index.hnsw
        allowed = index.alive[: index.size]
        if candidates is not None:
            allowed = np.zeros(index.size, dtype=bool)
            allowed[candidates] = True
        total = int(hnsw.ntotal)
        # Tombstones and filtered-out slots still occupy HNSW's top k: ask for enough that ``limit`` are left.
        live_fraction = max(int(allowed[:total].sum()), 1) / max(total, 1)
        k = min(total, max(limit, int(limit / live_fraction * 1.2) + 8))
        while True:
            hnsw.hnsw.efSearch = max(self.hnsw_ef_search, k)
            scores, labels = hnsw.search(query.reshape(1, -1), k)
            found_slots, found_scores = [], []
            for label, score in zip(labels[0], scores[0], strict=True):
                if label >= 0 and allowed[label]:
                    found_slots.append(int(label))
                    found_scores.append(float(score))
            enough = len(found_slots) >= limit or k >= total
            # Results come best first: once the k-th is below the threshold, more cannot add any.
            exhausted = len(scores[0]) > 0 and float(scores[0][-1]) < threshold
            if enough or exhausted:
                break
            if k >= _MAX_OVERFETCH:
                return self._exact(index, query, np.flatnonzero(allowed), limit, threshold)
            k = min(total, k * 4)
        # Slots appended since the HNSW index was last extended are searched exactly and merged in.
        if index.size > total:
            tail = np.arange(total, index.size)
            tail_slots, tail_scores = self._exact(index, query, tail[allowed[total:]], limit, threshold)
            found_slots += tail_slots
            found_scores += tail_scores
        order = sorted(range(len(found_slots)), key=lambda i: -found_scores[i])
        pairs = [(found_slots[i], found_scores[i]) for i in order if found_scores[i] >= threshold][:limit]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # --- catching up -------------------------------------------------------------------------------------

    def _catch_up(self, collection: str) -> _Index | None:
        """Bring this process's index of ``collection`` up to date; None if there is no such collection."""
        if self._pid != os.getpid():
            # A forked child: the parent's build threads did not come along, so start from the file again.
            self._indexes, self._builds, self._pid = {}, {}, os.getpid()
        conn = self._connection()
        with self._sqlite_errors(f"reading {collection!r}"):
            # One read transaction: the sequence and the rows come from the same snapshot of the WAL.
            conn.execute("BEGIN")
            try:
                head = conn.execute(
                    "SELECT generation, dimension, last_seq, embedder FROM collections WHERE name = ?",
                    (collection,),
                ).fetchone()
                if head is None:
                    self._indexes.pop(collection, None)
                    return None
                generation, dimension, last_seq, model = head
                index = self._indexes.get(collection)
                if index is None or index.generation != generation:
                    index = _Index(generation=generation, dimension=dimension)
                    index.vectors = np.zeros((0, dimension), dtype=np.float32)
                    self._indexes[collection] = index
                index.model = model
                if last_seq == index.last_seq:
                    self._maintain(collection, index)
                    return index
                rows = conn.execute(
                    "SELECT seq, id, text, metadata, terms, vector FROM vectors"
                    " WHERE collection = ? AND seq > ? ORDER BY seq",
                    (collection, index.last_seq),
                ).fetchall()
                deletions = conn.execute(
                    "SELECT seq, id FROM deletions WHERE collection = ? AND seq > ? ORDER BY seq",
                    (collection, index.last_seq),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        self._apply(index, rows, deletions)
        index.last_seq = last_seq
        self._maintain(collection, index)
        return index

    def _apply(self, index: _Index, rows: list[tuple[Any, ...]], deletions: list[tuple[Any, ...]]) -> None:
        # Upserts and deletions interleave by sequence; runs of upserts are appended in one go.
        pending: list[tuple[str, str, str, str, bytes]] = []
        d = 0
        for seq, item_id, text, metadata_json, terms, blob in rows:
            while d < len(deletions) and deletions[d][0] < seq:
                index.append(pending)
                pending = []
                index.kill(deletions[d][1])
                d += 1
            pending.append((item_id, text, metadata_json, terms, blob))
        index.append(pending)
        for _, item_id in deletions[d:]:
            index.kill(item_id)

    def _maintain(self, collection: str, index: _Index) -> None:
        # Compact once dead slots outnumber live ones (and there are enough to matter): exact search then
        # scans less, and a rebuilt HNSW graph holds no tombstones.
        if index.dead > max(1024, index.live):
            self._compact(index)
        if index.hnsw is None and index.live >= self.hnsw_threshold:
            if not self.build_in_background:
                index.hnsw = self._new_hnsw(index.dimension, index.vectors[: index.size])
            elif not index.building:
                self._start_build(collection, index)
        elif index.hnsw is not None and index.size - int(index.hnsw.ntotal) >= _HNSW_TAIL:
            index.hnsw.add(index.vectors[int(index.hnsw.ntotal) : index.size])
        elif index.hnsw is not None and index.live < self.hnsw_threshold // 2:
            index.hnsw = None

    def _compact(self, index: _Index) -> None:
        keep = np.flatnonzero(index.alive[: index.size])
        fresh = _Index(
            generation=index.generation, dimension=index.dimension, model=index.model, last_seq=index.last_seq
        )
        fresh.vectors = np.zeros((0, index.dimension), dtype=np.float32)
        fresh.append(
            [
                (
                    index.ids[s],
                    index.texts[s],
                    index.metadata_json[s],
                    _terms_of(index.metadata_json[s]),
                    index.vectors[s].tobytes(),
                )
                for s in keep.tolist()
            ]
        )
        fresh.layout, fresh.building = index.layout + 1, index.building
        index.__dict__.update(fresh.__dict__)

    def _new_hnsw(self, dimension: int, vectors: FloatMatrix) -> Any:
        import faiss

        hnsw = faiss.IndexHNSWFlat(dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.hnsw_ef_construction
        hnsw.add(vectors)
        return hnsw

    def _start_build(self, collection: str, index: _Index) -> None:
        """Build the HNSW graph in a thread; until it is ready, searches stay exact (slower, never wrong).

        Building 100k vectors takes tens of seconds: a search must not wait for it.
        """
        index.building = True
        layout = index.layout
        snapshot = index.vectors[: index.size].copy()

        def build() -> None:
            try:
                hnsw = self._new_hnsw(index.dimension, snapshot)
            except Exception:
                # Searches stay exact and correct; the next catch-up tries again. Logged, not hidden.
                logger.exception("building the HNSW index of vector collection %r failed", collection)
                hnsw = None
            with self._lock:
                index.building = False
                current = self._indexes.get(collection) is index and index.layout == layout
                if hnsw is not None and current and index.hnsw is None:
                    # Rows appended meanwhile sit past hnsw.ntotal: searched exactly until added.
                    index.hnsw = hnsw

        thread = threading.Thread(target=build, name=f"hnsw-build-{collection}", daemon=True)
        self._builds[collection] = thread
        thread.start()

    def wait_for_index(self, collection_name: str, timeout: float | None = None) -> bool:
        """Catch up with ``collection_name`` and wait for a pending HNSW build; True if HNSW now serves it.

        For benchmarks, tests and warm-up at worker start (``worker_process_init``).
        """
        collection = validate_collection_name(collection_name)
        with self._lock:
            index = self._catch_up(collection)
            thread = self._builds.get(collection)
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            index = self._catch_up(collection)
            return index is not None and index.hnsw is not None

    # --- health --------------------------------------------------------------------------------------

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy"|"unhealthy", "backend": "embedded", "path", "collections"|"error"}``.

        Reports rather than raises: the health endpoint shows every service's state side by side.
        """
        try:
            conn = self._connection()
            (n,) = conn.execute("SELECT COUNT(*) FROM collections").fetchone()
        except (sqlite3.Error, BackendUnavailable, ConfigurationError) as exc:
            return {"status": "unhealthy", "backend": "embedded", "path": str(self.path), "error": str(exc)}
        return {"status": "healthy", "backend": "embedded", "path": str(self.path), "collections": int(n)}

    def close(self) -> None:
        """Close this thread's SQLite connection (other threads' close when they end)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None
