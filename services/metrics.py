"""Prometheus metrics of the worker fleet, with ``prometheus-client``.

    python -m services.metrics --port 9808      # serves /metrics for every worker of the fleet

What is exported
----------------
- ``wft_task_duration_seconds{task}``: histogram of task run times (prerun to postrun).
- ``wft_task_outcomes_total{task,outcome}``: outcome ``success``, ``failure``, ``retry``, ``dead_lettered``
  (failed and sent to ``dead_letter``) or ``ignored``/``rejected``.
- ``wft_task_retries_total{task,error}``: retries, by the error type that caused them.
- ``wft_dead_letters_total{queue,reason}``: dead letters stored, by the queue they came from.
- ``wft_queue_depth{queue}`` and ``wft_queue_dead_lettered{queue}``: computed on each scrape from
  :meth:`services.message_queue.MessageQueue.queue_stats`.

Why the numbers live in Redis
-----------------------------
Workers are prefork pools, often on several machines. Prometheus' multiprocess mode (one mmap file per
process under ``PROMETHEUS_MULTIPROC_DIR``) only aggregates the processes of *one host*, needs the variable
set before ``prometheus_client`` is first imported, and needs dead-process cleanup when pool children are
recycled. Instead each worker process adds its observations to a few Redis hashes (one pipelined round trip
per task, in ``task_postrun``), and a custom collector turns those hashes into metric families when scraped.
So one scrape of any ``/metrics`` endpoint (this module's server, or the API's mount of :func:`make_asgi_app`)
gives the whole fleet's totals, and they survive worker restarts. Counters reset only when Redis is flushed.

If Redis does not answer, recording an observation is skipped with a warning: metrics never fail a task.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from config import QUEUES, get_settings
from services.errors import AppError
from services.redis_client import get_redis

logger = logging.getLogger(__name__)

PREFIX = "wft:metrics:"
OUTCOMES_KEY = PREFIX + "outcomes"
RETRIES_KEY = PREFIX + "retries"
DEAD_LETTERS_KEY = PREFIX + "dead_letters"
DURATION_KEY = PREFIX + "duration:"  # + task name
DURATION_TASKS_KEY = PREFIX + "duration_tasks"

#: Upper bounds of the duration histogram, seconds: from a sub-millisecond noop to the 300 s soft limit.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OUTCOMES = ("success", "failure", "retry", "dead_lettered", "ignored", "rejected")
_SEP = "|"

_warned_at = 0.0
_warn_lock = threading.Lock()


def _redis_failed(what: str, exc: BaseException) -> None:
    """Log a Redis failure at most once a minute per process (a task must never fail for its metrics)."""
    global _warned_at  # noqa: PLW0603 - one rate limit per process
    with _warn_lock:
        now = time.monotonic()
        if now - _warned_at < 60:
            return
        _warned_at = now
    logger.warning("metrics: could not record %s in Redis: %s (metrics are incomplete meanwhile)", what, exc)


def _bucket_field(duration: float) -> str:
    for bound in BUCKETS:
        if duration <= bound:
            return repr(float(bound))
    return "+Inf"


# --- recording (worker side) ---------------------------------------------------------------------------


def record_task(task: str, outcome: str, duration: float | None, client: redis.Redis | None = None) -> None:
    """Add one finished run of ``task``: its ``outcome`` (one of :data:`OUTCOMES`) and, when known, its
    ``duration`` in seconds. One pipelined round trip; a Redis error is logged, never raised."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
    try:
        with (client or get_redis()).pipeline(transaction=False) as pipe:
            pipe.hincrby(OUTCOMES_KEY, f"{task}{_SEP}{outcome}", 1)
            if duration is not None:
                key = DURATION_KEY + task
                pipe.sadd(DURATION_TASKS_KEY, task)
                pipe.hincrby(key, _bucket_field(duration), 1)
                pipe.hincrby(key, "count", 1)
                pipe.hincrbyfloat(key, "sum", duration)
            pipe.execute()
    except redis.RedisError as exc:
        _redis_failed(f"the outcome of {task}", exc)


def record_retry(task: str, error: str, client: redis.Redis | None = None) -> None:
    """Count one retry of ``task`` caused by an error of type ``error``. Never raises on Redis errors."""
    try:
        (client or get_redis()).hincrby(RETRIES_KEY, f"{task}{_SEP}{error}", 1)
    except redis.RedisError as exc:
        _redis_failed(f"a retry of {task}", exc)


def record_dead_letter(queue: str, reason: str, client: redis.Redis | None = None) -> None:
    """Count one dead letter stored from ``queue`` for ``reason``. Never raises on Redis errors."""
    try:
        (client or get_redis()).hincrby(DEAD_LETTERS_KEY, f"{queue}{_SEP}{reason}", 1)
    except redis.RedisError as exc:
        _redis_failed(f"a dead letter from {queue}", exc)


# --- exposition (scrape side) --------------------------------------------------------------------------


def _split(field: bytes, parts: int) -> list[str] | None:
    values = field.decode().rsplit(_SEP, parts - 1)
    return values if len(values) == parts else None


class FleetCollector(Collector):
    """Turns the Redis hashes the workers fill into metric families, and reads queue depths, per scrape.

    Takes an optional Redis client (default :func:`get_redis`) and the queues whose depth to report.
    A scrape while Redis is down yields only ``wft_metrics_redis_up 0`` rather than failing.
    """

    def __init__(self, client: redis.Redis | None = None, queues: Sequence[str] | None = None) -> None:
        self._client = client
        self._queues = [str(q) for q in (queues if queues is not None else QUEUES)]

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("wft_metrics_redis_up", "1 if the fleet's metrics could be read from Redis.")
        try:
            families = list(self._families())
        except (redis.RedisError, AppError) as exc:
            logger.warning("metrics scrape: could not read the fleet's metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        client = self._client or get_redis()
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(OUTCOMES_KEY)
            pipe.hgetall(RETRIES_KEY)
            pipe.hgetall(DEAD_LETTERS_KEY)
            pipe.smembers(DURATION_TASKS_KEY)
            outcomes, retries, dead, tasks = pipe.execute()

        family = CounterMetricFamily(
            "wft_task_outcomes", "Finished task runs by outcome.", labels=["task", "outcome"]
        )
        for field, value in sorted(outcomes.items()):
            labels = _split(field, 2)
            if labels:
                family.add_metric(labels, int(value))
        yield family

        family = CounterMetricFamily(
            "wft_task_retries", "Task retries by error type.", labels=["task", "error"]
        )
        for field, value in sorted(retries.items()):
            labels = _split(field, 2)
            if labels:
                family.add_metric(labels, int(value))
        yield family

        family = CounterMetricFamily(
            "wft_dead_letters", "Dead letters stored, by source queue and reason.", labels=["queue", "reason"]
        )
        for field, value in sorted(dead.items()):
            labels = _split(field, 2)
            if labels:
                family.add_metric(labels, int(value))
        yield family

        yield self._durations(client, sorted(t.decode() for t in tasks))
        yield from self._queue_depths()

    def _durations(self, client: redis.Redis, tasks: list[str]) -> Metric:
        family = HistogramMetricFamily(
            "wft_task_duration_seconds", "Task run time, prerun to postrun.", labels=["task"]
        )
        with client.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.hgetall(DURATION_KEY + task)
            rows = pipe.execute()
        for task, row in zip(tasks, rows, strict=True):
            fields = {k.decode(): v for k, v in row.items()}
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound in BUCKETS:
                cumulative += int(fields.get(repr(float(bound)), 0))
                buckets.append((repr(float(bound)), cumulative))
            count = int(fields.get("count", 0))
            buckets.append(("+Inf", count))
            family.add_metric([task], buckets, float(fields.get("sum", 0.0)))
        return family

    def _queue_depths(self) -> Iterator[Metric]:
        from services.message_queue import get_message_queue

        depth = GaugeMetricFamily("wft_queue_depth", "Messages waiting in the broker.", labels=["queue"])
        dead = GaugeMetricFamily(
            "wft_queue_dead_lettered", "Dead letters that came from the queue.", labels=["queue"]
        )
        mq = get_message_queue()
        for queue in self._queues:
            stats = mq.queue_stats(queue)
            depth.add_metric([queue], stats["pending"])
            dead.add_metric([queue], stats["dead_lettered"])
        yield depth
        yield dead


def fleet_registry(client: redis.Redis | None = None) -> CollectorRegistry:
    """A registry holding only the fleet collector (no per-process defaults: they would describe the
    scraping process, not the workers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client))
    return registry


def make_asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving the fleet's metrics, for the API to mount: ``app.mount("/metrics", ...)``."""
    from prometheus_client import make_asgi_app as _make

    return _make(registry=registry or fleet_registry())


def serve(port: int, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` for the fleet on ``addr:port`` in a background thread. Returns the server and
    thread (``server.shutdown()`` stops it). Raises OSError if the port is taken."""
    return start_http_server(port, addr=addr, registry=fleet_registry())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metrics", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=None, help="port to serve /metrics on (METRICS_PORT)")
    parser.add_argument("--addr", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else get_settings().metrics_port
    server, thread = serve(port, args.addr)
    print(f"serving the fleet's metrics on http://{args.addr}:{port}/metrics", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=get_settings().log_level)
    main()
