"""The whole pipeline, measured: executions end to end against lean Celery (the baseline) and bare Celery
with our settings, and bulk index writes against one write per message, in one run with a private Redis and
real workers.

    python -m bench.pipeline            # 2,000 executions, 2,000 index messages per mode
    python -m bench.pipeline --smoke    # a few dozen of each, seconds
    python -m bench.pipeline -n 400 --only e2e    # one part, chosen sizes

1. End to end: a 5-step workflow registered once and executed ``n`` times through the whole pipeline
   (``execute`` -> ``index_and_count_execution``) until every execution
   is counted and indexed, against the same shape of Celery noop tasks
   (``chain(noop, group(noop, noop, noop))``) on the same fleet shape and queues, twice: on lean Celery
   (``bench.fabric_tasks.lean_configuration``: what Celery's docs set up for reliable tasks, workers without
   ``-E``; the target is ours/lean >= 0.85 and >= 100 executions/s), and on bare Celery configured like
   ours (the gap between the two is what our settings cost).
2. Indexing throughput: ``m`` ``index_execution`` messages queued, then drained by one worker that writes
   them in bulk (threads pool, :mod:`tasks.batching`), against the same worker writing one document per
   message (``BATCH_MAX_SIZE=1``), and against the prefork worker the fleet ran before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, sandbox, worker_cpu
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess

WORKFLOW_ID = "bench-onboarding"
THREADS = 32


def five_step_workflow() -> dict[str, Any]:
    """input -> data_validation -> process -> process -> output."""
    return {
        "id": WORKFLOW_ID,
        "name": "Benchmark onboarding",
        "description": "Validate a sign-up, normalise name and email, emit the CRM record.",
        "tags": ["bench"],
        "definition": {
            "nodes": [
                {"id": "signup", "type": "input", "data": {"fields": ["name", "email", "plan"],
                                                          "defaults": {"plan": "free"}}},
                {"id": "schema", "type": "data_validation", "data": {"schema": {
                    "type": "object", "required": ["name", "email"],
                    "properties": {"name": {"type": "string"}, "email": {"type": "string"}}}}},
                {"id": "clean_name", "type": "process", "data": {"operation": "strip", "field": "name"}},
                {"id": "clean_email", "type": "process",
                 "data": {"operation": "lowercase", "field": "email"}},
                {"id": "record", "type": "output", "data": {"expression": "{name: name, email: email}"}},
            ],
            "edges": [
                {"source": "signup", "target": "schema"},
                {"source": "schema", "target": "clean_name"},
                {"source": "clean_name", "target": "clean_email"},
                {"source": "clean_email", "target": "record"},
            ],
        },
    }  # fmt: skip


@dataclass
class Rate:
    label: str
    count: int
    seconds: float
    extra: str = ""
    #: CPU milliseconds per pipeline of each part of the run, read from /proc over the measured interval.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.count / max(self.seconds, 1e-9)


def _fleet(
    workdir: Path, redis_url: str, tag: str, app: str = "tasks.app", events: bool = True
) -> list[WorkerProcess]:
    """The deployment shape: executions on prefork, index/vector/analytics work on a threads pool."""
    env = {"REDIS_URL": redis_url}
    return [
        WorkerProcess(workdir, ["workflow_execution"], concurrency=2, name=f"{tag}-exec", loglevel="WARNING",
                      app=app, include="", env=env, events=events),
        WorkerProcess(workdir, ["indexing_tasks", "vector_tasks", "analytics_tasks", "dead_letter"],
                      concurrency=THREADS, name=f"{tag}-index", loglevel="WARNING", app=app, include="",
                      env=env, extra_args=["-P", "threads"], events=events),
    ]  # fmt: skip


def _start(workers: list[WorkerProcess], app: Any) -> None:
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.wait_ready(app, timeout=120)


#: The parts of a run whose CPU time is read: the execution worker (main process, pool processes), the
#: index worker (one process: its threads pool runs in it), this producer and Redis.
CPU_PARTS = ("exec main", "exec pool", "index worker", "producer", "redis")


def _cpu(workers: list[WorkerProcess], redis_pid: int) -> dict[str, float]:
    (exec_main, exec_pool), (index_main, index_pool) = (worker_cpu(worker) for worker in workers)
    values = (exec_main, exec_pool, index_main + index_pool, cpu_seconds(os.getpid()), cpu_seconds(redis_pid))
    return dict(zip(CPU_PARTS, values, strict=True))


def _cpu_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {part: (after[part] - before[part]) * 1000 / max(n, 1) for part in CPU_PARTS}


def _stop(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.stop()


CANVAS_LABELS = {
    "lean": "lean Celery (its docs' reliable-task settings, no events) noop `chain(noop, group(noop x3))`",
    "bare": "bare Celery with our settings, noop `chain(noop, group(noop x3))`",
}


def measure_bare(n: int, workdir: Path, redis_url: str, redis_pid: int, kind: str = "bare") -> Rate:
    """``n`` canvases ``chain(noop, group(noop x3))`` on the same fleet shape: ``kind`` "bare" configured
    like ours, "lean" configured as Celery's docs set it up (workers without ``-E``)."""
    from celery import Celery, chain, group

    from bench import fabric_tasks as ft
    from bench import pipeline_tasks as pt
    from fabric.redis_clients import get_redis

    client = get_redis(redis_url)
    client.delete(pt.DONE, pt.FIRST, pt.LAST)
    if kind == "lean":
        # A producer of its own, on this run's Redis (the module's app read the settings at import).
        app = Celery("lean-pipeline-producer", set_as_current=False)
        app.conf.update(ft.lean_configuration(redis_url))
    else:
        app = pt.bare
    workers = _fleet(workdir, redis_url, kind, app=f"bench.pipeline_tasks:{kind}", events=kind != "lean")
    _start(workers, app)
    try:
        cpu_before = _cpu(workers, redis_pid)
        started = time.perf_counter()
        sent = []
        for _ in range(n):
            sent.append(
                chain(
                    app.signature(pt.HEAD, queue="workflow_execution"),
                    group(
                        app.signature(pt.LEAF, queue="indexing_tasks"),
                        app.signature(pt.LEAF, queue="indexing_tasks"),
                        app.signature(pt.LEAF, queue="analytics_tasks"),
                    ),
                ).apply_async()
            )
        wait_until(lambda: int(client.get(pt.DONE) or 0) >= 3 * n, timeout=max(120, n / 5), interval=0.2,
                   what=f"{kind}: {n} pipelines to finish")  # fmt: skip
        elapsed = time.perf_counter() - started
        cpu = _cpu_per(cpu_before, _cpu(workers, redis_pid), n)
    finally:
        _stop(workers)
        for result in sent:
            result.forget()
        sent.clear()
        app.close()
    return Rate(CANVAS_LABELS[kind], n, elapsed, cpu_ms=cpu)


def measure_pipeline(n: int, workdir: Path, redis_url: str, redis_pid: int) -> Rate:
    from fabric.producer import get_message_queue
    from services.analytics import get_workflow_stats
    from services.search import get_search_service
    from tasks.batching import batch_stats, reset_batch_stats
    from workflows.pipelines import Pipelines

    reset_batch_stats()
    mq = get_message_queue()
    pipelines = Pipelines(queue=mq)
    pipelines.register_workflow(five_step_workflow())
    workers = _fleet(workdir, redis_url, "ours")
    _start(workers, mq.app)
    search = get_search_service()
    try:
        cpu_before = _cpu(workers, redis_pid)
        started = time.perf_counter()
        for i in range(n):
            pipelines.request_execution(WORKFLOW_ID, {"name": f"  Ada {i} ", "email": f"ADA{i}@EXAMPLE.COM"})

        def done() -> bool:
            stats = get_workflow_stats(WORKFLOW_ID)
            return int(stats["runs"]) >= n and search.count("executions") >= n

        wait_until(done, timeout=max(300, n / 2), interval=0.5, what=f"{n} executions counted and indexed")
        elapsed = time.perf_counter() - started
        cpu = _cpu_per(cpu_before, _cpu(workers, redis_pid), n)
    finally:
        _stop(workers)
    stats = get_workflow_stats(WORKFLOW_ID)
    flushes = batch_stats()
    follow_ups = flushes.get("execution_follow_ups", {})
    extra = (
        f"{stats['runs']} runs counted ({stats['by_status']['completed']} completed); "
        f"index_and_count_execution: {follow_ups.get('messages', 0)} messages in "
        f"{follow_ups.get('flushes', 0)} bulk writes"
    )
    return Rate("ours: 5-step workflow, whole pipeline", n, elapsed, extra, cpu_ms=cpu)


def measure_indexing(mode: str, m: int, workdir: Path, redis_url: str) -> Rate:
    from fabric.producer import get_message_queue
    from services.search import get_search_service
    from tasks.batching import batch_stats, reset_batch_stats

    reset_batch_stats()
    mq = get_message_queue()
    search = get_search_service()
    base = search.count("executions")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(m):
        at = (start + dt.timedelta(seconds=i)).isoformat()
        execution = {"id": f"{mode}-{i}", "workflow_id": f"wf-{mode}-{i % 50}", "status": "completed",
                     "started_at": at, "completed_at": at, "output_data": {"value": i}}  # fmt: skip
        mq.enqueue("indexing_tasks", {"action": "index_execution", "execution": execution})
    env = {"REDIS_URL": redis_url}
    if mode == "bulk":
        worker = WorkerProcess(
            workdir,
            ["indexing_tasks"],
            concurrency=THREADS,
            name="idx-bulk",
            loglevel="WARNING",
            include="",
            env=env,
            extra_args=["-P", "threads"],
        )
    elif mode == "single":
        worker = WorkerProcess(
            workdir,
            ["indexing_tasks"],
            concurrency=THREADS,
            name="idx-single",
            loglevel="WARNING",
            include="",
            env={**env, "BATCH_MAX_SIZE": "1"},
            extra_args=["-P", "threads"],
        )
    else:
        worker = WorkerProcess(workdir, ["indexing_tasks"], concurrency=2, name="idx-prefork",
                               loglevel="WARNING", include="", env=env)  # fmt: skip
    worker.start()
    try:
        wait_until(lambda: search.count("executions") > base, timeout=120, interval=0.01,
                   what=f"{mode}: first document")  # fmt: skip
        first_at, first_count = time.perf_counter(), search.count("executions")
        wait_until(lambda: search.count("executions") >= base + m, timeout=max(120, m / 5), interval=0.05,
                   what=f"{mode}: {m} documents")  # fmt: skip
        elapsed = time.perf_counter() - first_at
    finally:
        worker.stop()
    flushes = batch_stats().get("index_executions", {})
    labels = {
        "bulk": f"bulk writes (threads -c{THREADS}, batches by count and time)",
        "single": f"one write per message (threads -c{THREADS}, BATCH_MAX_SIZE=1)",
        "prefork": "one write per message (prefork -c2, as the fleet ran before)",
    }
    writes = flushes.get("flushes", 0)
    extra = f"{writes} writes, {flushes.get('messages', 0) / max(writes, 1):.1f} messages a write"
    return Rate(labels[mode], base + m - first_count, elapsed, extra)


def measure_writes(m: int, workdir: Path) -> tuple[Rate, Rate]:
    """The write path alone, in this process: ``index_execution`` per document against
    ``bulk_index_executions`` in batches of ``BATCH_MAX_SIZE`` (what the batching consumer saves at most)."""
    from config import get_settings
    from services.search.sqlite import SqliteSearchService

    search = SqliteSearchService(workdir / "writes" / "search.db")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def doc(i: int, kind: str) -> dict[str, Any]:
        at = (start + dt.timedelta(seconds=i)).isoformat()
        return {"id": f"{kind}-{i}", "workflow_id": f"wf-{i % 50}", "status": "completed",
                "started_at": at, "completed_at": at, "output_data": {"value": i}}  # fmt: skip

    try:
        started = time.perf_counter()
        for i in range(m):
            search.index_execution(f"single-{i}", doc(i, "single"))
        single = Rate(
            "search writes alone: one `index_execution` per document", m, time.perf_counter() - started
        )
        size = get_settings().batch_max_size
        started = time.perf_counter()
        for low in range(0, m, size):
            search.bulk_index_executions([doc(i, "bulk") for i in range(low, min(m, low + size))])
        bulk = Rate(
            f"search writes alone: `bulk_index_executions` of {size}", m, time.perf_counter() - started
        )
    finally:
        search.close()
    return single, bulk


def run(n: int, m: int, parts: tuple[str, ...] = ("e2e", "indexing")) -> dict[str, Rate]:
    """Measure ``parts`` with a private Redis and data directory; the caller's settings are restored after."""
    results: dict[str, Rate] = {}
    with sandbox("bench-pipeline-") as box:
        workdir, url = box.workdir, box.redis_url
        assert box.redis.proc is not None
        redis_pid = box.redis.proc.pid
        if "indexing" in parts:
            results["writes_single"], results["writes_bulk"] = measure_writes(m, workdir)
            for mode in ("single", "bulk", "prefork"):
                results[mode] = measure_indexing(mode, m, workdir, url)
        if "e2e" in parts:
            results["lean"] = measure_bare(n, workdir, url, redis_pid, kind="lean")
            results["bare"] = measure_bare(n, workdir, url, redis_pid)
            results["ours"] = measure_pipeline(n, workdir, url, redis_pid)
    return results


def report(results: dict[str, Rate], n: int, m: int) -> str:
    lines = []
    if "ours" in results:
        lean, bare, ours = results["lean"], results["bare"], results["ours"]
        lines += [
            f"### End to end: {n:,} executions of a 5-step workflow (Redis, prefork -c2 executes, "
            f"threads -c{THREADS} indexes/counts, one run)",
            "",
            "| | pipelines | seconds | pipelines/s |",
            "| --- | ---: | ---: | ---: |",
            f"| {lean.label} | {lean.count:,} | {lean.seconds:.1f} | {lean.per_second:,.0f} |",
            f"| {bare.label} | {bare.count:,} | {bare.seconds:.1f} | {bare.per_second:,.0f} |",
            f"| {ours.label} | {ours.count:,} | {ours.seconds:.1f} | {ours.per_second:,.0f} |",
            f"| ratio ours/lean canvas (target >= 0.85) | | | {ours.per_second / lean.per_second:.2f} |",
            f"| ratio ours/bare canvas (same settings) | | | {ours.per_second / bare.per_second:.2f} |",
            f"| ratio bare/lean canvas (what our settings cost) | | | "
            f"{bare.per_second / lean.per_second:.2f} |",
            f"| ours: executions/s (target >= 100) | | | {ours.per_second:,.1f} |",
            "",
            ours.extra,
            "",
            "CPU milliseconds per pipeline, read from /proc while it ran (the producer's includes polling):",
            "",
            "| | " + " | ".join(CPU_PARTS) + " | total |",
            "| --- |" + " ---: |" * (len(CPU_PARTS) + 1),
        ]
        for name, rate in (("lean", lean), ("bare", bare), ("ours", ours)):
            cells = " | ".join(f"{rate.cpu_ms[part]:.2f}" for part in CPU_PARTS)
            lines.append(f"| {name} | {cells} | {sum(rate.cpu_ms.values()):.2f} |")
        lines.append("")
    if "bulk" in results:
        single, bulk, prefork = results["single"], results["bulk"], results["prefork"]
        lines += [
            f"### Indexing: {m:,} `index_execution` messages drained by one worker (SQLite FTS5 search)",
            "",
            "| | documents | seconds | docs/s | |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for rate in (single, prefork, bulk):
            lines.append(f"| {rate.label} | {rate.count:,} | {rate.seconds:.2f} | {rate.per_second:,.0f} "
                         f"| {rate.extra} |")  # fmt: skip
        ws, wb = results["writes_single"], results["writes_bulk"]
        for rate in (ws, wb):
            lines.append(f"| {rate.label} | {rate.count:,} | {rate.seconds:.2f} | {rate.per_second:,.0f} | |")
        lines += [
            f"| ratio bulk / one write per message, writes alone | | | {wb.per_second / ws.per_second:.1f}x "
            "| target >= 10x |",
            f"| ratio bulk / one write per message (same pool) | | | "
            f"{bulk.per_second / single.per_second:.1f}x | through Celery |",
            f"| ratio bulk / prefork per message | | | {bulk.per_second / prefork.per_second:.1f}x | |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny sizes")
    parser.add_argument("-n", type=int, default=None, help="executions (default 2000, smoke 20)")
    parser.add_argument("-m", type=int, default=None, help="index messages per mode (default 2000, smoke 60)")
    parser.add_argument("--only", choices=["e2e", "indexing"], default=None, help="run one part")
    args = parser.parse_args(argv)
    n = args.n or (20 if args.smoke else 2_000)
    m = args.m or (60 if args.smoke else 2_000)
    parts = (args.only,) if args.only else ("e2e", "indexing")
    text = report(run(n, m, parts), n, m)
    print(text)
    if not args.smoke and args.only is None:
        out = Path(__file__).parent / "results" / "pipeline.md"
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
