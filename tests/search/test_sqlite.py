"""What only the embedded backend has: a file that survives restarts, several writer processes, a fork,
a schema whose log query never sorts, and the cached factory."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import reload_settings
from fabric.errors import BackendUnavailable
from services.search import get_search_service, reset_search_service
from services.search.sqlite import SqliteSearchService, fts_query
from tests.support.servers import run_in_spawned_interpreter

WRITERS = 4
ENTRIES_PER_WRITER = 5_000


def _entry(writer: int, n: int) -> dict[str, object]:
    return {
        "timestamp": f"2024-05-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.{writer:03d}Z",
        "level": "INFO",
        "message": f"writer{writer} wrote entry {n}",
        "service": f"svc{writer}",
        "execution_id": f"ex-{writer}-{n // 100}",
    }


def _write_logs(path: str, writer: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    service = SqliteSearchService(Path(path), busy_timeout=120)
    barrier.wait()
    # Half one call per entry (20,000 write transactions contend for the lock), half in bulk batches.
    half = ENTRIES_PER_WRITER // 2
    for n in range(half):
        service.index_log(_entry(writer, n))
    for start in range(half, ENTRIES_PER_WRITER, 250):
        service.bulk_index_logs([_entry(writer, n) for n in range(start, start + 250)])
    service.close()


def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "search.db"
    SqliteSearchService(path).close()  # the schema exists before the race, as after a deploy
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_write_logs, args=(str(path), w, barrier)) for w in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(240)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    service = SqliteSearchService(path)
    assert service.count("logs") == WRITERS * ENTRIES_PER_WRITER
    for writer in range(WRITERS):
        found = service.search_logs(query=f"writer{writer} wrote", limit=10_000)
        assert len(found) == ENTRIES_PER_WRITER
        assert {int(r["message"].rsplit(" ", 1)[1]) for r in found} == set(range(ENTRIES_PER_WRITER))
        assert len(service.search_logs(service=f"svc{writer}", limit=10_000)) == ENTRIES_PER_WRITER
    service.close()


def test_index_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "search.db"
    first = SqliteSearchService(path)
    first.index_workflow("wf", {"name": "Invoice mailer", "tags": ["billing"]})
    first.index_execution(
        "ex", {"workflow_id": "wf", "status": "completed", "started_at": "2024-01-01T00:00:00Z"}
    )
    log_id = first.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "mail sent"})
    first.close()

    second = SqliteSearchService(path)
    assert [r["id"] for r in second.search_workflows("invoice", tags=["billing"])] == ["wf"]
    assert [r["id"] for r in second.search_executions(workflow_id="wf")] == ["ex"]
    assert [r["id"] for r in second.search_logs(query="mail sent")] == [log_id]
    second.close()


def _child_writes(service: SqliteSearchService) -> None:
    service.index_log({"timestamp": "2024-01-01T00:00:01Z", "level": "INFO", "message": "from the child"})


def _forked_child_scenario(path: str) -> None:
    service = SqliteSearchService(Path(path))
    service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "from the parent"})
    parent_connection = service._connection()

    child = multiprocessing.get_context("fork").Process(target=_child_writes, args=(service,))
    child.start()
    child.join(60)

    assert child.exitcode == 0
    assert service._connection() is parent_connection
    assert [r["message"] for r in service.search_logs(query="from")] == ["from the child", "from the parent"]
    service.close()


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    run_in_spawned_interpreter(_forked_child_scenario, str(tmp_path / "search.db"))


def test_database_is_wal_with_payloads_outside_full_text(tmp_path: Path) -> None:
    service = SqliteSearchService(tmp_path / "search.db")
    service.index_execution(
        "ex",
        {"workflow_id": "wf", "status": "done", "input_data": {"secret": "zebracorn"}, "output_data": [1]},
    )

    raw = sqlite3.connect(tmp_path / "search.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    fts_tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE sql LIKE '%USING fts5%'")}
    assert fts_tables == {
        "workflows_fts",
        "logs_fts",
    }  # executions (and their payloads) have no full-text index
    raw.close()
    assert service.search_executions(workflow_id="wf")[0]["input_data"] == {"secret": "zebracorn"}
    service.close()


def test_log_text_query_reads_newest_first_without_sorting(tmp_path: Path) -> None:
    """The design that keeps the 1M-entry query fast: FTS5 walks rowids (time) backwards and stops at the
    limit. A temp b-tree in the plan would mean every match is collected and sorted first."""
    service = SqliteSearchService(tmp_path / "search.db")
    service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "warm up"})
    conn = service._connection()
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT l.source FROM logs_fts CROSS JOIN logs AS l ON l.rid = logs_fts.rowid "
        "WHERE logs_fts MATCH ? AND l.level = ? ORDER BY logs_fts.rowid DESC LIMIT 100",
        (fts_query(["connection", "timeout"]), "ERROR"),
    ).fetchall()
    details = " | ".join(row[3] for row in plan)
    assert "TEMP B-TREE" not in details, details
    assert "SCAN logs_fts VIRTUAL TABLE" in details, details
    service.close()


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        (["invoice"], '"invoice"'),
        (['say "hi"'], '"say ""hi"""'),
        (["a", "OR", "b*"], '"a" AND "OR" AND "b*"'),
        (["name:x", "NEAR(y"], '"name:x" AND "NEAR(y"'),
    ],
)
def test_fts_query_quotes_every_term(terms: list[str], expected: str) -> None:
    assert fts_query(terms) == expected


def test_a_held_write_lock_raises_backend_unavailable_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "search.db"
    service = SqliteSearchService(path, busy_timeout=0.2)
    service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "before"})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable, match="not writable"):
            service.index_log({"timestamp": "2024-01-01T00:00:01Z", "level": "INFO", "message": "blocked"})
        # Readers are not blocked by the writer (WAL).
        assert [r["message"] for r in service.search_logs()] == ["before"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    service.index_log({"timestamp": "2024-01-01T00:00:01Z", "level": "INFO", "message": "after"})
    assert service.count("logs") == 2
    service.close()


def test_an_unusable_path_raises_backend_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    service = SqliteSearchService(blocker / "search.db")

    with pytest.raises(BackendUnavailable, match="search database"):
        service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "x"})
    health = service.health_check()
    assert health["status"] == "unhealthy"
    assert "search database" in health["error"]


def test_factory_builds_sqlite_under_data_dir_once_per_process() -> None:
    reset_search_service()
    try:
        service = get_search_service()
        assert service is get_search_service()
        assert isinstance(service, SqliteSearchService)
        settings = reload_settings()
        assert service.path == settings.data_dir / "search" / "search.db"
        service.index_log(
            {"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": f"pid {os.getpid()}"}
        )
        assert service.path.exists()
    finally:
        reset_search_service()
    assert get_search_service() is not service
    reset_search_service()


def _colliding_ids() -> tuple[str, str]:
    """Two ids whose rid slots (crc32 low 20 bits) are equal, so they contend for one rid in a millisecond."""
    seen: dict[int, str] = {}
    for n in itertools.count():
        candidate = f"log-{n}"
        slot = zlib.crc32(candidate.encode()) & 0xFFFFF
        if slot in seen:
            return seen[slot], candidate
        seen[slot] = candidate
    raise AssertionError("unreachable")


@pytest.mark.parametrize("together", [True, False])
def test_entries_in_one_millisecond_with_colliding_slots_are_all_kept(tmp_path: Path, together: bool) -> None:
    first, second = _colliding_ids()
    service = SqliteSearchService(tmp_path / "search.db")
    entries = [
        {
            "id": log_id,
            "timestamp": "2024-01-01T00:00:00.000500Z",
            "level": "INFO",
            "message": f"same ms {log_id}",
        }
        for log_id in (first, second)
    ]
    if together:
        assert service.bulk_index_logs(entries) == 2
    else:
        service.index_log(entries[0])
        service.index_log(entries[1])

    assert service.count("logs") == 2
    assert {r["id"] for r in service.search_logs(query="same ms")} == {first, second}
    service.close()


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteSearchService]:
    service = SqliteSearchService(tmp_path_factory.mktemp("fuzz") / "search.db")
    service.index_workflow(
        "wf", {"name": 'Invoice "mailer" (v2)', "description": "sends AND stores NEAR files*"}
    )
    service.index_log(
        {"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": 'a "quoted" OR b* -c'}
    )
    yield service
    service.close()


@settings(max_examples=300, deadline=None)
@given(query=st.text(max_size=40))
def test_no_user_query_breaks_fts5_syntax(fuzz_service: SqliteSearchService, query: str) -> None:
    workflows = fuzz_service.search_workflows(query)
    logs = fuzz_service.search_logs(query=query)

    assert all(r["id"] == "wf" for r in workflows)
    assert len(logs) <= 1


def _held_lock_scenario(path: str) -> None:
    service = SqliteSearchService(Path(path))
    service.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "from the parent"})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with service._guard():
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        child = multiprocessing.get_context("fork").Process(target=_child_writes, args=(service,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join(10)
    assert [r["message"] for r in service.search_logs(query="from")] == ["from the child", "from the parent"]
    service.close()


def test_a_child_forked_while_a_thread_holds_the_lock_does_not_deadlock(tmp_path: Path) -> None:
    run_in_spawned_interpreter(_held_lock_scenario, str(tmp_path / "search.db"))
