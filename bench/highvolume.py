"""The high-volume path, end to end: a producer calls ``enqueue_many`` with index documents, workers consume
the envelopes and write them in bulk, until every document is searchable in the embedded search. Measured
against bare Celery per-message noop tasks (one broker message each) in the same run, with the same broker
and worker settings.

    python -m bench.highvolume            # 100,000 documents, 20,000 bare noop messages
    python -m bench.highvolume --smoke    # seconds

Prints documents/s end to end (a time-ordered log stream, and the same documents with timestamps out of
order), enqueue_many messages/s from one producer, the ratios against bare Celery, and in-process profiles
of the producer and of the bulk consumer (where the remaining time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from bench.common import reset_process_state, sandbox
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess


def _docs(n: int, offset: int = 0, ordered: bool = True) -> list[dict[str, Any]]:
    """``n`` log entries. ``ordered``: a time-ordered stream, 100 us apart (10,000 entries a second), as logs
    arrive. Otherwise the timestamps cycle through one hour, so every batch lands all over the table."""
    services = ("billing", "auth", "search", "mailer")
    start = datetime(2024, 5, 1, 12, tzinfo=UTC)

    def timestamp(k: int) -> str:
        if ordered:
            return (start + timedelta(microseconds=100 * k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"2024-05-01T12:{(k // 60) % 60:02d}:{k % 60:02d}Z"

    return [
        {
            "action": "index_log",
            "entry": {
                "id": f"hv-{offset + i}",
                "timestamp": timestamp(offset + i),
                "level": ("INFO", "WARNING", "ERROR")[i % 3],
                "message": f"request {offset + i} of tenant {i % 97} took {i % 500} ms on {services[i % 4]}",
                "service": services[i % 4],
            },
        }
        for i in range(n)
    ]


def _bare_drain(n: int, workdir: Path, redis_url: str) -> float:
    from celery import Celery

    from bench import fabric_tasks as ft
    from config import get_settings
    from fabric import celery_config
    from fabric.redis_clients import get_redis

    client = get_redis(redis_url)
    client.delete(ft.DONE, ft.FIRST, ft.LAST)
    client.set(ft.TARGET, n)
    app = Celery("bare-producer", set_as_current=False)
    app.conf.update(celery_config.build(get_settings()))
    for _ in range(n):
        app.send_task("bench.bare_noop", queue="analytics_tasks", routing_key="analytics_tasks")
    app.close()
    worker = WorkerProcess(
        workdir, ["analytics_tasks"], concurrency=2, name="hv-bare", loglevel="WARNING",
        app="bench.fabric_tasks:bare", include="", env={"REDIS_URL": redis_url},
    )  # fmt: skip
    worker.start()
    try:
        wait_until(lambda: client.get(ft.LAST) is not None, timeout=max(60, n / 50), interval=0.2,
                   what="bare noop drain")  # fmt: skip
    finally:
        worker.stop()
    first, last = float(client.get(ft.FIRST) or 0), float(client.get(ft.LAST) or 0)
    return (n - 1) / max(last - first, 1e-9)


def _ours(n: int, workdir: Path, redis_url: str, ordered: bool = True) -> dict[str, float]:
    from fabric.producer import MessageQueue
    from services.search.sqlite import SqliteSearchService

    data_dir = workdir / ("data" if ordered else "data-unordered")
    worker = WorkerProcess(workdir, ["indexing_tasks", "dead_letter"], concurrency=2, name="hv-ours",
                           loglevel="WARNING", include="",
                           env={"REDIS_URL": redis_url, "DATA_DIR": str(data_dir)})  # fmt: skip
    worker.start()
    mq = MessageQueue()
    worker.wait_ready(mq.app)
    search = SqliteSearchService(data_dir / "search" / "search.db")
    search.count("logs")  # create the schema before the clock starts
    docs = _docs(n, ordered=ordered)
    started = time.perf_counter()
    mq.enqueue_many("indexing_tasks", docs)
    enqueued = time.perf_counter()
    try:
        wait_until(lambda: search.count("logs") >= n, timeout=max(120, n / 200), interval=0.1,
                   what="every document searchable")  # fmt: skip
    finally:
        done = time.perf_counter()
        worker.stop()
        mq.close()
    assert search.search_logs(query="tenant 42", limit=5), "documents are searchable"
    search.close()
    return {"end_to_end": n / (done - started), "enqueue_during_run": n / (enqueued - started)}


def _enqueue_alone(n: int) -> float:
    """``enqueue_many`` alone, from one producer, into a queue nobody consumes: messages/s."""
    from fabric.producer import MessageQueue

    mq = MessageQueue()
    more = _docs(n, offset=n)
    t0 = time.perf_counter()
    mq.enqueue_many("indexing_tasks", more)
    rate = n / (time.perf_counter() - t0)
    mq.close()
    return rate


def _top(profiler: cProfile.Profile, sort: str, count: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(count)
    lines = [line.replace(str(Path.cwd()) + "/", "") for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(lines[: count + 6])


def _profiles(n: int) -> dict[str, str]:
    """Where the time goes, profiled in-process (cProfile; the sandbox's Redis and ``DATA_DIR``): the
    producer's ``enqueue_many``, and the bulk consumer's whole path for the same envelopes (unpack, write,
    record statuses) against the embedded search."""
    from types import SimpleNamespace

    from fabric.contracts import validate
    from fabric.envelopes import pack_items, unpack_items
    from fabric.producer import MessageQueue
    from services.search import reset_search_service
    from tasks.bulk import process_envelope

    docs = _docs(n, offset=10 * n)
    mq = MessageQueue()
    producer = cProfile.Profile()
    producer.enable()
    mq.enqueue_many("indexing_tasks", docs)
    producer.disable()
    mq.close()

    reset_search_service()
    envelopes = []
    for start in range(0, n, 500):
        items = [
            {"action": "index_log", "payload": validate("indexing_tasks", d)[1]}
            for d in docs[start : start + 500]
        ]
        envelopes.append(pack_items(items))
    request = SimpleNamespace(id="", retries=0, hostname="bench@localhost")
    task = cast(Any, SimpleNamespace(request=request, app=None))
    consumer = cProfile.Profile()
    consumer.enable()
    for number, packed in enumerate(envelopes):
        request.id = f"bench-envelope-{number}"
        process_envelope(task, "indexing_tasks", unpack_items(packed))
    consumer.disable()
    reset_search_service()
    return {"producer": _top(producer, "cumulative", 14), "consumer": _top(consumer, "tottime", 14)}


def run(n_docs: int, n_bare: int) -> dict[str, Any]:
    with sandbox("bench-hv-") as box:
        bare = _bare_drain(n_bare, box.workdir, box.redis_url)
        box.redis.client().flushdb()
        ours = _ours(n_docs, box.workdir, box.redis_url)
        box.redis.client().flushdb()
        unordered = _ours(n_docs, box.workdir, box.redis_url, ordered=False)["end_to_end"]
        box.redis.client().flushdb()
        enqueue_many = _enqueue_alone(n_docs)
        box.redis.client().flushdb()
        os.environ["DATA_DIR"] = str(box.workdir / "profile")  # restored when the sandbox closes
        reset_process_state()
        profiles = _profiles(min(n_docs, 20_000))
    return {"bare_drain": bare, **ours, "unordered": unordered, "enqueue_many": enqueue_many,
            "profiles": profiles, "n_docs": n_docs, "n_bare": n_bare}  # fmt: skip


def report(r: dict[str, Any]) -> str:
    ratio = r["end_to_end"] / r["bare_drain"]
    return "\n".join([
        f"### High-volume path ({r['n_docs']:,} index documents; bare baseline {r['n_bare']:,} noop tasks)",
        "",
        "| measure | per second | vs bare Celery drain |",
        "| --- | ---: | ---: |",
        f"| bare Celery, one noop task per message, drain (prefork -c2) | {r['bare_drain']:,.0f} | 1.0x |",
        f"| ours, end to end: `enqueue_many` -> bulk consumer -> searchable (target >= 10,000) "
        f"| {r['end_to_end']:,.0f} | {ratio:.1f}x |",
        f"| the same with timestamps out of order (every batch lands all over the table) "
        f"| {r['unordered']:,.0f} | {r['unordered'] / r['bare_drain']:.1f}x |",
        f"| `enqueue_many` from one producer (target >= 10,000) | {r['enqueue_many']:,.0f} | |",
        "",
        "Producer, `enqueue_many` (cProfile, in-process, by cumulative time):",
        "",
        "```",
        r["profiles"]["producer"],
        "```",
        "",
        "Bulk consumer, unpack + write + statuses (cProfile, in-process, by own time):",
        "",
        "```",
        r["profiles"]["consumer"],
        "```",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny sizes")
    args = parser.parse_args(argv)
    results = run(2_000, 200) if args.smoke else run(100_000, 20_000)
    text = report(results)
    print(text)
    if not args.smoke:
        out = Path(__file__).parent / "results" / "highvolume.md"
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
