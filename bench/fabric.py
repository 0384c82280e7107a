"""Fabric overhead: noop tasks through ``enqueue()`` and our base task, against bare Celery ``send_task`` to a
bare task, with the same broker, worker and settings, in one run.

    python -m bench.fabric            # 20,000 messages each
    python -m bench.fabric --smoke    # a few hundred, seconds

Prints enqueue rate and drain rate for both and the ratio ours/bare (target >= 0.85 on both).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import sandbox
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess


@dataclass
class Rates:
    enqueue: float
    drain: float


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
    if kind == "bare":
        # Stock Celery, configured like ours, sending by name.
        app = Celery("bare-producer", set_as_current=False)
        app.conf.update(celery_config.build(get_settings()))
        started = time.perf_counter()
        for _ in range(n):
            app.send_task("bench.bare_noop", queue="analytics_tasks", routing_key="analytics_tasks")
        enqueue_s = time.perf_counter() - started
        worker = WorkerProcess(workdir, ["analytics_tasks"], concurrency=2, name=f"bench-{kind}",
                               loglevel="WARNING", app="bench.fabric_tasks:bare", include="",
                               env={"REDIS_URL": redis_url})  # fmt: skip
    else:
        mq = MessageQueue()
        started = time.perf_counter()
        for _ in range(n):
            mq.enqueue("analytics_tasks", {"action": "bench_noop"})
        enqueue_s = time.perf_counter() - started
        worker = WorkerProcess(workdir, ["analytics_tasks"], concurrency=2, name=f"bench-{kind}",
                               loglevel="WARNING", include="bench.fabric_tasks",
                               env={"REDIS_URL": redis_url})  # fmt: skip
    worker.start()
    try:
        wait_until(lambda: client.get(ft.LAST) is not None, timeout=max(60, n / 50), interval=0.2,
                   what=f"{kind}: {n} tasks to finish")  # fmt: skip
    finally:
        worker.stop()
        (app if kind == "bare" else mq.app).close()
    first, last = float(client.get(ft.FIRST) or 0), float(client.get(ft.LAST) or 0)
    return Rates(enqueue=n / enqueue_s, drain=(n - 1) / max(last - first, 1e-9))


def run(n: int) -> dict[str, Rates]:
    # Both sides of the comparison read the same settings from one private Redis.
    with sandbox("bench-fabric-") as box:
        return {kind: _measure(kind, n, box.workdir, box.redis_url) for kind in ("bare", "ours")}


def report(results: dict[str, Rates], n: int) -> str:
    bare, ours = results["bare"], results["ours"]
    lines = [
        f"### Fabric overhead ({n:,} noop messages, Redis, worker prefork -c2, one run)",
        "",
        "| | enqueue msg/s | drain msg/s |",
        "| --- | ---: | ---: |",
        f"| bare Celery `send_task` + bare task | {bare.enqueue:,.0f} | {bare.drain:,.0f} |",
        f"| ours: `enqueue()` + base task | {ours.enqueue:,.0f} | {ours.drain:,.0f} |",
        f"| ratio ours/bare (target >= 0.85) | {ours.enqueue / bare.enqueue:.2f} "
        f"| {ours.drain / bare.drain:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny sizes")
    parser.add_argument("-n", type=int, default=None, help="messages per side (default 20000, smoke 300)")
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
