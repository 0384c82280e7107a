"""Fabric overhead: noop tasks through ``enqueue()`` and our base task, against lean Celery (the
baseline) and against bare Celery configured exactly like ours, with the same broker and worker, in one run.

    python -m bench.fabric            # 20,000 messages each
    python -m bench.fabric -n 4000    # fewer
    python -m bench.fabric --smoke    # a few hundred, seconds

Three kinds, each ``n`` messages enqueued, then drained by one prefork -c2 worker:

- ``lean``: stock Celery as its docs set it up for reliable tasks (``bench.fabric_tasks.lean_configuration``:
  JSON, acks late, prefetch 1, reject on worker lost, results in Redis; no task or sent events, no STARTED
  state, no extended results, kombu's default four priority lists instead of our ten), ``send_task`` by
  name to the default queue, a worker without ``-E``.
- ``bare``: stock Celery configured like ours (``celery_config.build(get_settings())``), ``send_task`` to a
  bare task: what our settings cost is the gap between ``lean`` and ``bare``.
- ``ours``: ``enqueue()`` (contract validation) and the base task (delivery counting, dead-lettering).

Prints enqueue rate and drain rate for each, the ratio ours/lean (the target, >= 0.85 on both) and the ratio
ours/bare (what the fabric code costs on top of the settings).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import sandbox
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess


@dataclass
class Rates:
    enqueue: float
    drain: float


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
        wait_until(lambda: client.get(ft.LAST) is not None, timeout=max(60, n / 50), interval=0.2,
                   what=f"{kind}: {n} tasks to finish")  # fmt: skip
    finally:
        worker.stop()
        close()
    first, last = float(client.get(ft.FIRST) or 0), float(client.get(ft.LAST) or 0)
    return Rates(enqueue=n / enqueue_s, drain=(n - 1) / max(last - first, 1e-9))


def run(n: int) -> dict[str, Rates]:
    # Every kind reads its Redis from one private server; the lean one ignores the rest of the settings.
    with sandbox("bench-fabric-") as box:
        return {kind: _measure(kind, n, box.workdir, box.redis_url) for kind in KINDS}


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}" if base > 0 else "n/a"


def report(results: dict[str, Rates], n: int) -> str:
    lean, bare, ours = results["lean"], results["bare"], results["ours"]
    lines = [
        f"### Fabric overhead ({n:,} noop messages, Redis, worker prefork -c2, one run)",
        "",
        "| | enqueue msg/s | drain msg/s |",
        "| --- | ---: | ---: |",
        f"| lean Celery (its docs' reliable-task settings, no events) `send_task` + task "
        f"| {lean.enqueue:,.0f} | {lean.drain:,.0f} |",
        f"| bare Celery with our settings `send_task` + bare task "
        f"| {bare.enqueue:,.0f} | {bare.drain:,.0f} |",
        f"| ours: `enqueue()` + base task | {ours.enqueue:,.0f} | {ours.drain:,.0f} |",
        f"| ratio ours/lean (target >= 0.85) | {_ratio(ours.enqueue, lean.enqueue)} "
        f"| {_ratio(ours.drain, lean.drain)} |",
        f"| ratio ours/bare (same settings) | {_ratio(ours.enqueue, bare.enqueue)} "
        f"| {_ratio(ours.drain, bare.drain)} |",
        f"| ratio bare/lean (what our settings cost) | {_ratio(bare.enqueue, lean.enqueue)} "
        f"| {_ratio(bare.drain, lean.drain)} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny sizes")
    parser.add_argument("-n", type=int, default=None, help="messages per kind (default 20000, smoke 300)")
    args = parser.parse_args(argv)
    n = args.n or (300 if args.smoke else 20_000)
    text = report(run(n), n)
    print(text)
    if not args.smoke:
        out = Path(__file__).parent / "results" / "fabric.md"
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
