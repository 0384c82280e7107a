"""Fabric overhead: noop tasks through ``enqueue()`` and our base task, against lean Celery (the
baseline) and against bare Celery configured exactly like ours, with the same broker and worker, in one run.

    python -m bench.fabric            # 10,000 messages each, three interleaved rounds (medians)
    python -m bench.fabric -n 4000 --rounds 1
    python -m bench.fabric --smoke    # a few hundred, seconds

Three kinds, each ``n`` messages enqueued, then drained by one prefork -c2 worker:

- ``lean``: stock Celery as its docs set it up for reliable tasks (``bench.fabric_tasks.lean_configuration``:
  JSON, acks late, prefetch 1, reject on worker lost, results in Redis; no task or sent events, no STARTED
  state, no extended results, kombu's default four priority lists instead of our ten), ``send_task`` by
  name to the default queue, a worker without ``-E``.
- ``bare``: stock Celery configured like ours (``celery_config.build(get_settings())``), ``send_task`` to a
  bare task: what our settings cost is the gap between ``lean`` and ``bare``.
- ``ours``: ``enqueue()`` (contract validation) and the base task (delivery counting, dead-lettering).

Prints enqueue rate and drain rate for each, the worker's CPU time per message (its main process, and
its pool processes together, read from /proc while it drains: where the time goes), the ratio ours/lean
(the target, >= 0.85 on both) and the ratio ours/bare (what the fabric code costs on top of the settings).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import sandbox, worker_cpu
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess


@dataclass
class Rates:
    enqueue: float
    drain: float
    #: CPU milliseconds per message of the worker's main process (fetch, dispatch, ack, events) and of its
    #: pool processes together (the task, its state writes), read from /proc while it drained.
    main_ms: float = 0.0
    pool_ms: float = 0.0


KINDS = ("lean", "bare", "ours")


def _measure(kind: str, n: int, workdir: Path, redis_url: str) -> Rates:
    from celery import Celery

    from bench import fabric_tasks as ft
    from config import get_settings
    from fabric import celery_config
    from fabric.producer import MessageQueue
    from fabric.redis_clients import get_redis

    client = get_redis(redis_url)
    client.flushdb()
    client.set(ft.TARGET, n)
    worker_args: dict[str, Any] = {"concurrency": 2, "name": f"bench-{kind}", "loglevel": "WARNING",
                                   "env": {"REDIS_URL": redis_url}}  # fmt: skip
    if kind in ("lean", "bare"):
        # Stock Celery sending by name: lean as Celery's docs set it up, bare configured like ours.
        app = Celery(f"{kind}-producer", set_as_current=False)
        options: dict[str, str] = {}
        if kind == "lean":
            # Celery's default queue and routing, as ``lean_noop.delay()`` would send.
            app.conf.update(ft.lean_configuration(redis_url))
            task, queue = "bench.lean_noop", str(app.conf.task_default_queue)
        else:
            app.conf.update(celery_config.build(get_settings()))
            task, queue = "bench.bare_noop", "analytics_tasks"
            options = {"queue": queue, "routing_key": queue}
        started = time.perf_counter()
        for _ in range(n):
            app.send_task(task, **options)
        enqueue_s = time.perf_counter() - started
        close = app.close
        # The lean worker sends no task events (no -E): Celery's default.
        worker = WorkerProcess(workdir, [queue], app=f"bench.fabric_tasks:{kind}", include="",
                               events=kind != "lean", **worker_args)  # fmt: skip
    else:
        mq = MessageQueue()
        started = time.perf_counter()
        for _ in range(n):
            mq.enqueue("analytics_tasks", {"action": "bench_noop"})
        enqueue_s = time.perf_counter() - started
        close = mq.app.close
        worker = WorkerProcess(workdir, ["analytics_tasks"], include="bench.fabric_tasks", **worker_args)
    worker.start()
    try:
        # CPU is read between the first task done and the last (the worker's start-up left out).
        wait_until(lambda: client.get(ft.FIRST) is not None, timeout=120, interval=0.05,
                   what=f"{kind}: the first task to finish")  # fmt: skip
        done_before, (main_before, pool_before) = int(client.get(ft.DONE) or 0), worker_cpu(worker)
        wait_until(lambda: client.get(ft.LAST) is not None, timeout=max(60, n / 50), interval=0.05,
                   what=f"{kind}: {n} tasks to finish")  # fmt: skip
        main_after, pool_after = worker_cpu(worker)
    finally:
        worker.stop()
        close()
    first, last = float(client.get(ft.FIRST) or 0), float(client.get(ft.LAST) or 0)
    counted = max(n - done_before, 1)
    return Rates(enqueue=n / enqueue_s, drain=(n - 1) / max(last - first, 1e-9),
                 main_ms=1000 * (main_after - main_before) / counted,
                 pool_ms=1000 * (pool_after - pool_before) / counted)  # fmt: skip


def run(n: int, rounds: int = 1) -> dict[str, Rates]:
    """``rounds`` rounds of every kind, interleaved (lean, bare, ours, lean, ...) so that a busy moment of
    the machine hits all kinds alike; each figure is the median over the rounds."""
    # Every kind reads its Redis from one private server; the lean one ignores the rest of the settings.
    runs: dict[str, list[Rates]] = {kind: [] for kind in KINDS}
    with sandbox("bench-fabric-") as box:
        for _ in range(rounds):
            for kind in KINDS:
                runs[kind].append(_measure(kind, n, box.workdir, box.redis_url))
    fields = ("enqueue", "drain", "main_ms", "pool_ms")
    return {
        kind: Rates(*(statistics.median(getattr(r, name) for r in measured) for name in fields))
        for kind, measured in runs.items()
    }


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}" if base > 0 else "n/a"


def report(results: dict[str, Rates], n: int, rounds: int = 1) -> str:
    lean, bare, ours = results["lean"], results["bare"], results["ours"]

    def row(label: str, r: Rates) -> str:
        return f"| {label} | {r.enqueue:,.0f} | {r.drain:,.0f} | {r.main_ms:.2f} | {r.pool_ms:.2f} |"

    def ratios(label: str, a: Rates, b: Rates) -> str:
        return f"| {label} | {_ratio(a.enqueue, b.enqueue)} | {_ratio(a.drain, b.drain)} | | |"

    how = "one run" if rounds == 1 else f"median of {rounds} interleaved rounds"
    lines = [
        f"### Fabric overhead ({n:,} noop messages, Redis, worker prefork -c2, {how})",
        "",
        "| | enqueue msg/s | drain msg/s | worker main CPU ms/msg | pool CPU ms/msg |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("lean Celery (its docs' reliable-task settings, no events) `send_task` + task", lean),
        row("bare Celery with our settings `send_task` + bare task", bare),
        row("ours: `enqueue()` + base task", ours),
        ratios("ratio ours/lean (target >= 0.85)", ours, lean),
        ratios("ratio ours/bare (same settings)", ours, bare),
        ratios("ratio bare/lean (what our settings cost)", bare, lean),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny sizes")
    parser.add_argument("-n", type=int, default=None, help="messages per kind (default 10000, smoke 300)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every kind (default 3, smoke 1)")
    args = parser.parse_args(argv)
    n = args.n or (300 if args.smoke else 10_000)
    rounds = args.rounds or (1 if args.smoke else 3)
    text = report(run(n, rounds), n, rounds)
    print(text)
    if not args.smoke:
        out = Path(__file__).parent / "results" / "fabric.md"
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
