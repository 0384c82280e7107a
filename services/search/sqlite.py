"""The embedded search backend: SQLite FTS5 (bm25 for workflows, newest first for logs), one file, no server.

Schema, chosen for the log query at a million entries (a two-word query, newest first, a few filters):

- ``logs`` is a plain table whose integer key ``rid`` encodes the entry's time:
  ``(timestamp_ms << 20) | (crc32(id) & 0xFFFFF)`` (ms precision, the same as an Elasticsearch ``date``).
  The full-text index ``logs_fts`` is an FTS5 *external-content* table over ``logs.message`` keyed by the
  same ``rid``. FTS5 walks a term's doclist in rowid order, so "newest first" is ``ORDER BY rowid DESC`` and
  a ``LIMIT`` stops the walk after the page is full instead of ranking every match; a time range becomes a
  rowid range that FTS5 applies inside the index. Level, service and execution id are indexed columns of the
  plain table (each index ends in ``rid``, so a filtered page is also read newest first without a sort).
- ``workflows`` + ``workflows_fts`` (name, description) ranked by ``bm25`` with the name weighted
  over the description; tags live in ``workflow_tags`` so "has all these tags" is an index lookup.
- ``executions`` is a plain table (no text field is searched) with indexes on the filter columns.

Payloads are stored as JSON in ``source`` and never indexed for full text. Each write updates a table and
its FTS index in the same transaction, so a document is searchable once the call returns. The FTS rows are
written by the code, not by triggers: FTS5 flushes its pending terms at every statement savepoint, and a
trigger per row made bulk loads 2.6x slower (measured: 18k vs 47k rows/s).

Concurrency: one connection per process (opened lazily, opened again after a fork), WAL so readers never
wait for the writer, ``BEGIN IMMEDIATE`` so writers queue on the busy timeout instead of failing on a lock
upgrade, and ``synchronous=FULL`` because a Celery task is acknowledged once the write returns: a write
that returned must survive a power cut, or the acknowledged message is lost. Bulk writes amortise the sync.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fabric.errors import BackendUnavailable, InvalidInput
from services.search.base import (
    Document,
    ExecutionDoc,
    LogDoc,
    WorkflowDoc,
    check_id,
    check_index,
    check_limit,
    check_optional_str,
    check_tags,
    normalize_execution,
    normalize_log,
    normalize_workflow,
    parse_range,
    query_terms,
    split_bulk_id,
)

SCHEMA_VERSION = 1
#: bm25 column weights of workflows_fts (name, description): a name hit counts ten description hits.
NAME_WEIGHT, DESCRIPTION_WEIGHT = 10.0, 1.0
#: The low 20 bits of a log rid are a hash of its id (probing on collision): 2**20 slots per millisecond.
_SEQ_BITS = 20
_SEQ_MASK = (1 << _SEQ_BITS) - 1
# SQLite's default limit on bound parameters is 32766 in 3.32+; chunks stay far below it.
_IN_CHUNK = 500
#: Pages the WAL may hold before a commit copies them into the database (SQLite's default is 1,000, about
#: 4 MB). Each checkpoint syncs the database file; at the default they took a fifth of a bulk log load's
#: time (measured: 10,200 vs 12,800 entries/s for 100,000 entries in batches of 500). The WAL grows to
#: about 40 MB instead.
WAL_AUTOCHECKPOINT_PAGES = 10_000
_TOKENIZER = "unicode61 tokenchars '_'"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS workflows (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS workflows_fts USING fts5(
    name, description, content='workflows', content_rowid='rid', tokenize="{_TOKENIZER}"
);
CREATE TABLE IF NOT EXISTS workflow_tags (
    tag TEXT NOT NULL,
    rid INTEGER NOT NULL,
    PRIMARY KEY (tag, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workflow_tags_rid ON workflow_tags(rid);

CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_us INTEGER,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_workflow ON executions(workflow_id, started_us);
CREATE INDEX IF NOT EXISTS executions_status ON executions(status, started_us);
CREATE INDEX IF NOT EXISTS executions_started ON executions(started_us);

CREATE TABLE IF NOT EXISTS logs (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    ts_us INTEGER NOT NULL,
    level TEXT NOT NULL,
    service TEXT,
    execution_id TEXT,
    message TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_level ON logs(level);
CREATE INDEX IF NOT EXISTS logs_service ON logs(service);
CREATE INDEX IF NOT EXISTS logs_execution ON logs(execution_id);
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
    message, content='logs', content_rowid='rid', tokenize="{_TOKENIZER}"
);
"""

_FTS_DELETE_WORKFLOW = (
    "INSERT INTO workflows_fts(workflows_fts, rowid, name, description) VALUES ('delete', ?, ?, ?)"
)
_TABLES = {"workflows": "workflows", "executions": "executions", "logs": "logs"}


def fts_query(terms: Sequence[str]) -> str:
    """Every chunk becomes an FTS5 string (``"..."`` with quotes doubled): operators, column filters,
    parentheses and ``*`` inside it are plain text to the tokenizer, so no user input is query syntax."""
    return " AND ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _dumps(source: Document) -> str:
    return json.dumps(source, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class SqliteSearchService:
    """The guide's search service on SQLite FTS5. Safe to share between threads; one connection per process.

    ``path`` is the database file (created with its directory); ``busy_timeout`` is how long, in seconds, a
    writer waits for another process's write transaction before raising BackendUnavailable.
    """

    backend = "sqlite"

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()
        # Connections inherited over fork are kept referenced, never closed or used: closing one in the
        # child would run SQLite's unlock logic on locks that belong to the parent.
        self._inherited: list[sqlite3.Connection] = []

    # --- connection -------------------------------------------------------------------------------

    def _guard(self) -> threading.RLock:
        """This process's lock. In a forked child the parent's lock may be held by a thread that does not
        exist here, so the child forgets the lock and the connection before taking anything."""
        if self._pid is not None and self._pid != os.getpid():
            if self._conn is not None:
                self._inherited.append(self._conn)
            self._conn = None
            self._pid = None
            self._lock = threading.RLock()
        return self._lock

    def _connection(self) -> sqlite3.Connection:
        """The connection of this process, opened on first use (call with the lock from ``_guard`` held)."""
        if self._conn is None:
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"cannot open the search database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("PRAGMA temp_store = MEMORY")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _split_sql(_SCHEMA):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif version > SCHEMA_VERSION:
                raise BackendUnavailable(
                    f"search database {self.path} has schema {version}; this code knows {SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            conn.close()
            raise BackendUnavailable(f"cannot prepare the search database {self.path}: {exc}") from exc
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Put the database in WAL mode (a property of the file: set once, by whoever creates it).

        Reading or switching the mode can fail with SQLITE_BUSY at once, without the busy handler, while
        another process is closing the database (its last connection checkpoints and removes the WAL under
        an exclusive lock): this tries again until the busy timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._guard():
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"search database {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to the busy
        timeout), so two processes never deadlock upgrading read locks."""
        with self._guard():
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"search database {self.path} is not writable now: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise BackendUnavailable(f"search database {self.path}: write failed: {exc}") from exc
                raise

    def close(self) -> None:
        """Close this process's connection (a later call opens a new one)."""
        with self._guard():
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._pid = None

    # --- workflows --------------------------------------------------------------------------------

    def index_workflow(self, workflow_id: str, data: Mapping[str, Any]) -> str:
        """Upsert one workflow. Takes its id and data (``name`` required; ``description``, ``tags``).

        Returns the id. Raises InvalidInput for bad data, BackendUnavailable if the database fails.
        """
        doc = normalize_workflow(workflow_id, data)
        with self._write() as conn:
            self._put_workflows(conn, [doc])
        return doc.id

    def bulk_index_workflows(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Upsert workflows that carry their own ``"id"``, in one transaction. Returns how many were written
        (unchanged ones included). Nothing is written if any document is invalid (InvalidInput)."""
        normalized = [normalize_workflow(*split_bulk_id(d, "workflow")) for d in docs]
        if normalized:
            with self._write() as conn:
                self._put_workflows(conn, normalized)
        return len(normalized)

    def _put_workflows(self, conn: sqlite3.Connection, docs: Sequence[WorkflowDoc]) -> None:
        for doc in docs:
            source = _dumps(doc.source)
            row = conn.execute(
                "SELECT rid, name, description, source FROM workflows WHERE id = ?", (doc.id,)
            ).fetchone()
            if row is not None:
                rid, old_name, old_description, old_source = row
                if old_source == source:
                    continue  # a repeated write changes nothing
                conn.execute(
                    _FTS_DELETE_WORKFLOW,
                    (rid, old_name, old_description),
                )
                conn.execute(
                    "UPDATE workflows SET name = ?, description = ?, source = ? WHERE rid = ?",
                    (doc.name, doc.description, source, rid),
                )
                conn.execute("DELETE FROM workflow_tags WHERE rid = ?", (rid,))
            else:
                rid = conn.execute(
                    "INSERT INTO workflows(id, name, description, source) VALUES (?, ?, ?, ?) RETURNING rid",
                    (doc.id, doc.name, doc.description, source),
                ).fetchone()[0]
            conn.execute(
                "INSERT INTO workflows_fts(rowid, name, description) VALUES (?, ?, ?)",
                (rid, doc.name, doc.description),
            )
            conn.executemany(
                "INSERT INTO workflow_tags(tag, rid) VALUES (?, ?)", [(t, rid) for t in doc.tags]
            )

    def search_workflows(
        self, query: str, tags: Sequence[str] | None = None, limit: int = 10
    ) -> list[Document]:
        """Workflows matching every word of ``query`` (in name or description), best first (bm25, name
        weighted over description), having all of ``tags``. An empty query lists workflows by name.

        Returns documents with ``id`` (and ``score`` for a text query).
        Raises InvalidInput, BackendUnavailable.
        """
        terms = query_terms(query)
        wanted_tags = check_tags(tags)
        limit = check_limit(limit)
        if terms == []:
            return []
        params: list[Any] = []
        tag_clause = ""
        if wanted_tags:
            marks = ", ".join("?" * len(wanted_tags))
            tag_clause = (
                f"w.rid IN (SELECT rid FROM workflow_tags WHERE tag IN ({marks}) "  # noqa: S608 - marks, a count
                f"GROUP BY rid HAVING count(*) = {len(wanted_tags)})"
            )
        if terms is None:
            sql = "SELECT w.source, NULL FROM workflows AS w"
            if tag_clause:
                sql += " WHERE " + tag_clause
                params += wanted_tags
            sql += " ORDER BY w.name, w.id LIMIT ?"
        else:
            sql = (
                f"SELECT w.source, bm25(workflows_fts, {NAME_WEIGHT}, {DESCRIPTION_WEIGHT}) AS r "  # noqa: S608
                "FROM workflows_fts JOIN workflows AS w ON w.rid = workflows_fts.rowid "
                "WHERE workflows_fts MATCH ?"
            )
            params.append(fts_query(terms))
            if tag_clause:
                sql += " AND " + tag_clause
                params += wanted_tags
            sql += " ORDER BY r, w.id LIMIT ?"
        params.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_with_score(source, rank) for source, rank in rows]

    def delete_workflow(self, workflow_id: str) -> bool:
        """Remove a workflow from the index. Returns whether it was there. Raises BackendUnavailable."""
        wid = check_id(workflow_id, "workflow_id")
        with self._write() as conn:
            row = conn.execute("SELECT rid, name, description FROM workflows WHERE id = ?", (wid,)).fetchone()
            if row is None:
                return False
            rid, name, description = row
            conn.execute(
                _FTS_DELETE_WORKFLOW,
                (rid, name, description),
            )
            conn.execute("DELETE FROM workflow_tags WHERE rid = ?", (rid,))
            conn.execute("DELETE FROM workflows WHERE rid = ?", (rid,))
        return True

    # --- executions -------------------------------------------------------------------------------

    def index_execution(self, execution_id: str, execution_data: Mapping[str, Any]) -> str:
        """Upsert one execution (``workflow_id``, ``status`` required; ``started_at`` ISO-8601).

        Returns the id. Raises InvalidInput for bad data, BackendUnavailable if the database fails."""
        doc = normalize_execution(execution_id, execution_data)
        with self._write() as conn:
            self._put_executions(conn, [doc])
        return doc.id

    def bulk_index_executions(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Upsert executions carrying their own ``"id"``, in one transaction. Returns the count written."""
        normalized = [normalize_execution(*split_bulk_id(d, "execution")) for d in docs]
        if normalized:
            with self._write() as conn:
                self._put_executions(conn, normalized)
        return len(normalized)

    def _put_executions(self, conn: sqlite3.Connection, docs: Sequence[ExecutionDoc]) -> None:
        conn.executemany(
            "INSERT INTO executions(id, workflow_id, status, started_us, source) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET workflow_id = excluded.workflow_id, status = excluded.status, "
            "started_us = excluded.started_us, source = excluded.source "
            "WHERE executions.source IS NOT excluded.source",
            [(d.id, d.workflow_id, d.status, d.started_us, _dumps(d.source)) for d in docs],
        )

    def search_executions(
        self,
        workflow_id: str | None = None,
        status: str | None = None,
        date_range: Mapping[str, Any] | None = None,
        limit: int = 50,
    ) -> list[Document]:
        """Executions matching every given filter, newest ``started_at`` first (those without one last).

        ``date_range`` is ``{"from": iso, "to": iso}`` on ``started_at``, both ends inclusive and optional.
        Raises InvalidInput for a bad filter or date, BackendUnavailable if the database fails.
        """
        where: list[str] = []
        params: list[Any] = []
        if check_optional_str(workflow_id, "workflow_id") is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if check_optional_str(status, "status") is not None:
            where.append("status = ?")
            params.append(status)
        low, high = parse_range(date_range, "date_range")
        if low is not None:
            where.append("started_us >= ?")
            params.append(low)
        if high is not None:
            where.append("started_us <= ?")
            params.append(high)
        sql = "SELECT source FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_us IS NULL, started_us DESC, id DESC LIMIT ?"
        params.append(check_limit(limit))
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [json.loads(source) for (source,) in rows]

    def delete_execution(self, execution_id: str) -> bool:
        """Remove an execution from the index. Returns whether it was there. Raises BackendUnavailable."""
        eid = check_id(execution_id, "execution_id")
        with self._write() as conn:
            return conn.execute("DELETE FROM executions WHERE id = ?", (eid,)).rowcount > 0

    # --- logs -------------------------------------------------------------------------------------

    def index_log(self, entry: Mapping[str, Any]) -> str:
        """Upsert one log entry (``timestamp``, ``level``, ``message``; ``service``, ``execution_id``, ``id``
        optional). Without an id, the id is derived from the content, so a redelivered entry is stored once.

        Returns the entry's id. Raises InvalidInput for a bad entry, BackendUnavailable if the database fails.
        """
        doc = normalize_log(entry)
        with self._write() as conn:
            self._put_logs(conn, [doc])
        return doc.id

    def bulk_index_logs(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Upsert many log entries in one transaction. Returns how many were written (unchanged included).
        Nothing is written if any entry is invalid (InvalidInput)."""
        docs = [normalize_log(e) for e in entries]
        if docs:
            with self._write() as conn:
                self._put_logs(conn, docs)
        return len(docs)

    def _put_logs(self, conn: sqlite3.Connection, docs: Sequence[LogDoc]) -> None:
        latest: dict[str, LogDoc] = {}
        for doc in docs:  # the last write of an id in one batch wins, as it would in separate calls
            latest[doc.id] = doc
        existing: dict[str, tuple[int, str, str]] = {}
        ids = list(latest)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT id, rid, source, message FROM logs WHERE id IN ({marks})"  # noqa: S608 - only marks
            for lid, rid, source, message in conn.execute(sql, chunk):
                existing[lid] = (rid, source, message)
        fresh: list[tuple[int, LogDoc]] = []
        for doc in latest.values():
            found = existing.get(doc.id)
            if found is not None:
                old_rid, old_source, old_message = found
                if old_source == doc.content_json:
                    continue  # a redelivery: nothing changes
                conn.execute(
                    "INSERT INTO logs_fts(logs_fts, rowid, message) VALUES ('delete', ?, ?)",
                    (old_rid, old_message),
                )
                conn.execute("DELETE FROM logs WHERE rid = ?", (old_rid,))
            fresh.append(
                (((doc.timestamp_us // 1000) << _SEQ_BITS) | (zlib.crc32(doc.id.encode()) & _SEQ_MASK), doc)
            )
        # The low bits come from the id's hash, so rids rarely collide; one IN query per chunk finds the
        # collisions with stored rows, and a colliding entry probes the next free slot of its millisecond.
        taken: set[int] = set()
        wanted = [rid for rid, _ in fresh]
        for start in range(0, len(wanted), _IN_CHUNK):
            rid_chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(rid_chunk))
            sql = f"SELECT rid FROM logs WHERE rid IN ({marks})"  # noqa: S608 - only marks
            taken.update(r for (r,) in conn.execute(sql, rid_chunk))
        rows: list[tuple[Any, ...]] = []
        for hashed_rid, doc in fresh:
            rid = self._free_rid(conn, hashed_rid, taken, doc.id) if hashed_rid in taken else hashed_rid
            taken.add(rid)
            rows.append(
                (
                    rid,
                    doc.id,
                    doc.timestamp_us,
                    doc.level,
                    doc.service,
                    doc.execution_id,
                    doc.message,
                    doc.content_json,
                )
            )
        conn.executemany(
            "INSERT INTO logs(rid, id, ts_us, level, service, execution_id, message, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany("INSERT INTO logs_fts(rowid, message) VALUES (?, ?)", [(r[0], r[6]) for r in rows])

    @staticmethod
    def _free_rid(conn: sqlite3.Connection, rid: int, taken: set[int], doc_id: str) -> int:
        base = rid & ~_SEQ_MASK
        for step in range(1, _SEQ_MASK + 1):
            candidate = base | ((rid + step) & _SEQ_MASK)
            if candidate in taken:
                continue
            if conn.execute("SELECT 1 FROM logs WHERE rid = ?", (candidate,)).fetchone() is None:
                return candidate
            taken.add(candidate)
        raise InvalidInput(f"more than {_SEQ_MASK + 1} log entries in the millisecond of {doc_id!r}")

    def search_logs(
        self,
        query: str | None = None,
        level: str | None = None,
        service: str | None = None,
        execution_id: str | None = None,
        time_range: Mapping[str, Any] | None = None,
        limit: int = 100,
    ) -> list[Document]:
        """Log entries matching every given condition, newest first. ``query``: every word must be in the
        message; ``level`` is compared upper-cased; ``time_range`` is ``{"from": iso, "to": iso}``
        (inclusive).

        Returns documents with ``id``. Logs are ordered by time, not relevance, so they carry no ``score``:
        bm25 must count every match of every term, 20-30 ms at a million entries, while the newest-first
        page stops after ``limit`` matches (under 1 ms). Raises InvalidInput, BackendUnavailable.
        """
        terms = query_terms(query)
        limit = check_limit(limit)
        level_value = check_optional_str(level, "level")
        filters: list[tuple[str, Any]] = []
        if level_value is not None:
            filters.append(("l.level = ?", level_value.upper()))
        if check_optional_str(service, "service") is not None:
            filters.append(("l.service = ?", service))
        if check_optional_str(execution_id, "execution_id") is not None:
            filters.append(("l.execution_id = ?", execution_id))
        low, high = parse_range(time_range, "time_range")
        if terms == []:
            return []
        # The rid range narrows to whole milliseconds; ts_us then applies the exact bounds.
        rid_low = None if low is None else (low // 1000) << _SEQ_BITS
        rid_high = None if high is None else ((high // 1000) << _SEQ_BITS) | _SEQ_MASK
        if low is not None:
            filters.append(("l.ts_us >= ?", low))
        if high is not None:
            filters.append(("l.ts_us <= ?", high))
        params: list[Any] = []
        if terms is None:
            sql = "SELECT l.source, NULL, l.id FROM logs AS l WHERE 1"
            key = "l.rid"
        else:
            # With an execution id the plain table's index is the selective side, so it drives and FTS5
            # checks each candidate by rowid; otherwise FTS5 drives (CROSS JOIN fixes the order) and stops
            # as soon as the page is full.
            join = (
                "logs AS l JOIN logs_fts ON logs_fts.rowid = l.rid"
                if execution_id
                else ("logs_fts CROSS JOIN logs AS l ON l.rid = logs_fts.rowid")
            )
            sql = f"SELECT l.source, NULL, l.id FROM {join} WHERE logs_fts MATCH ?"  # noqa: S608
            params.append(fts_query(terms))
            key = "l.rid" if execution_id else "logs_fts.rowid"
        if rid_low is not None:
            sql += f" AND {key} >= ?"
            params.append(rid_low)
        if rid_high is not None:
            sql += f" AND {key} <= ?"
            params.append(rid_high)
        for clause, value in filters:
            sql += " AND " + clause
            params.append(value)
        sql += f" ORDER BY {key} DESC LIMIT ?"
        params.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_with_score(source, rank, lid) for source, rank, lid in rows]

    # --- common -----------------------------------------------------------------------------------

    def count(self, index: str) -> int:
        """How many documents ``index`` ("workflows", "executions" or "logs") holds."""
        table = _TABLES[check_index(index)]
        with self._read() as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names

    def optimize(self) -> None:
        """Merge every FTS index into one segment (after a large bulk load; queries then read one b-tree)."""
        with self._write() as conn:
            for table in ("workflows_fts", "logs_fts"):
                conn.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")  # noqa: S608 - fixed names

    def health_check(self) -> dict[str, Any]:
        """``{"status": "healthy", "backend": "sqlite", "path", "schema_version"}``, or status "unhealthy"
        with the ``error`` when the database cannot be opened or read. Cheap (no table scan): probes call it
        often, and counting a million log rows is not cheap."""
        try:
            with self._read() as conn:
                conn.execute("SELECT rid FROM logs ORDER BY rid DESC LIMIT 1").fetchall()
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except BackendUnavailable as exc:
            return {"status": "unhealthy", "backend": self.backend, "path": str(self.path), "error": str(exc)}
        return {
            "status": "healthy",
            "backend": self.backend,
            "path": str(self.path),
            "schema_version": version,
        }


def _with_score(source: str, rank: float | None, doc_id: str | None = None) -> Document:
    doc: Document = json.loads(source)
    if doc_id is not None:
        doc["id"] = doc_id  # log rows keep their id in a column, not in the stored JSON
    if rank is not None:
        doc["score"] = -rank  # bm25() is lower-is-better; callers get higher-is-better, as from Elasticsearch
    return doc


def _split_sql(script: str) -> list[str]:
    """The statements of the schema script, split where ``sqlite3.complete_statement`` says one ends."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
