"""Prometheus metrics of the worker fleet, with ``prometheus-client``.

    python -m services.metrics --port 9808      # serves /metrics for every worker of the fleet

What is exported
----------------
- ``wft_task_duration_seconds{task}``: histogram of task run times (prerun to postrun).
- ``wft_task_outcomes_total{task,outcome}``: outcome ``success``, ``failure``, ``retry``, ``dead_lettered``
  (failed and sent to ``dead_letter``) or ``ignored``/``rejected``.
- ``wft_task_retries_total{task,error}``: retries, by the error type that caused them.
- ``wft_dead_letters_total{queue,reason}``: dead letters stored, by the queue they came from (counted once
  per stored record, so a redelivered dead letter is not counted twice).
- ``wft_workflow_executions_total{workflow,status}``: finished executions, status ``completed``, ``failed``
  or ``cancelled``. Counted once per execution id, even when its message is redelivered (see
  :func:`record_execution`).
- ``wft_workflow_execution_duration_seconds{workflow}``: histogram of execution run times, first step to
  last (the record's ``started_at`` to ``completed_at``).
- ``wft_workflow_step_duration_seconds{workflow,step_type}``: histogram of the run times of the steps that
  ran (completed or failed; skipped and never-run steps are left out), retries of a step included.
- ``wft_queue_depth{queue}`` and ``wft_queue_dead_lettered{queue}``: computed on each scrape from
  :meth:`fabric.producer.MessageQueue.queue_stats`. The depth is every message waiting in the broker
  for that queue: on Redis the sum of kombu's ten per-priority lists (``<queue>`` and
  ``<queue>\\x06\\x16<level>``), on RabbitMQ the queue's ready count. The autoscalers read this metric.
- ``wft_broker_unacked``: messages workers have taken and not yet acknowledged, all queues together
  (running, prefetched, or held until their countdown or retry backoff is due). Redis broker only: one
  ``HLEN`` of kombu's ``unacked`` hash (counting them per queue would mean reading every held message).
- ``wft_metrics_redis_up``: 1 if the scrape could read the fleet's numbers from Redis.

Worker liveness is not exported here: Flower's own ``/metrics`` has ``flower_worker_online{worker}``
(Prometheus scrapes both; see ``deploy/prometheus/prometheus.yml``).

Every endpoint reports the whole fleet, so two scrape targets give the same numbers: aggregate across
instances with ``max``, never ``sum`` (``deploy/grafana`` and ``deploy/prometheus/alerts.yml`` do).

Why the numbers live in Redis
-----------------------------
Workers are prefork pools, often on several machines. Prometheus' multiprocess mode (one mmap file per
process under ``PROMETHEUS_MULTIPROC_DIR``) only aggregates the processes of *one host*, needs the variable
set before ``prometheus_client`` is first imported, and needs dead-process cleanup when pool children are
recycled. Instead each worker process adds its observations to a few Redis hashes, and a custom collector
turns those hashes into metric families when scraped.
So one scrape of any ``/metrics`` endpoint (this module's server, or the API's, which serves
:func:`fleet_registry`) gives the whole fleet's totals, and they survive worker restarts. Counters reset
only when Redis is flushed.

A worker process does not write a task's outcome when the task ends: :func:`count_task` (``task_postrun``)
adds it to the process's own tally, and a thread adds the tally to Redis in one pipelined round trip every
``METRICS_FLUSH_INTERVAL`` seconds (0.5), and when the process stops (``worker_process_shutdown``,
``worker_shutdown``). So a busy worker pays one round trip per half second for its task metrics, not one
per task; the numbers a scrape sees are at most that much behind, and a process killed with ``kill -9``
loses at most its last half second of task outcomes. Executions are counted at once
(:func:`record_execution`: once per execution id, in the same script as its marker).

If Redis does not answer, recording an observation is skipped with a warning: metrics never fail a task.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from config import QUEUES, get_settings
from config.settings import Settings
from fabric import keys
from fabric.contracts import FINISHED_STATUSES
from fabric.errors import AppError, BackendUnavailable
from fabric.redis_clients import LuaScript, get_redis
from fabric.registry import PerProcess

logger = logging.getLogger(__name__)

PREFIX = keys.METRICS
OUTCOMES_KEY = PREFIX + "outcomes"
RETRIES_KEY = PREFIX + "retries"
DEAD_LETTERS_KEY = PREFIX + "dead_letters"
DURATION_KEY = PREFIX + "duration:"  # + task name
DURATION_TASKS_KEY = PREFIX + "duration_tasks"
EXECUTIONS_KEY = PREFIX + "executions"
EXECUTION_DURATION_KEY = PREFIX + "execution_duration:"  # + workflow id
EXECUTION_DURATION_INDEX = PREFIX + "execution_duration_workflows"
STEP_DURATION_KEY = PREFIX + "step_duration:"  # + workflow id | step type
STEP_DURATION_INDEX = PREFIX + "step_duration_series"
COUNTED_KEY = PREFIX + "counted:"  # + execution id: set once the execution is counted
EXECUTION_STATUSES = FINISHED_STATUSES

#: Upper bounds of the duration histogram, seconds: from a sub-millisecond noop to the 300 s soft limit.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OUTCOMES = ("success", "failure", "retry", "dead_lettered", "ignored", "rejected")
_SEP = "|"

# Count an execution only once: the marker, the counter and both histograms change together or not at all.
# KEYS: marker, executions hash, execution histogram index, execution histogram, step histogram index,
#       then one step histogram per step observation.
# ARGV: marker TTL, executions field, workflow id, execution bucket ('' without a duration), duration,
#       then per step observation: index member, bucket, seconds.
_COUNT_EXECUTION = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
local function observe(key, bucket, seconds)
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('HINCRBY', key, 'count', 1)
  redis.call('HINCRBYFLOAT', key, 'sum', seconds)
end
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[3])
  observe(KEYS[4], ARGV[4], ARGV[5])
end
for i = 6, #KEYS do
  local at = 6 + (i - 6) * 3
  redis.call('SADD', KEYS[5], ARGV[at])
  observe(KEYS[i], ARGV[at + 1], ARGV[at + 2])
end
return 1
"""
_count_execution = LuaScript(_COUNT_EXECUTION)

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
    """Add one finished run of ``task`` to Redis now: its ``outcome`` (one of :data:`OUTCOMES`) and, when
    known, its ``duration`` in seconds. One pipelined round trip; a Redis error is logged, never raised.
    (Workers tally instead, with :func:`count_task`.)"""
    tally = TaskTally()
    tally.tally(task, outcome, duration)
    tally.flush(client)


class TaskTally:
    """A process's task outcomes and durations not yet in Redis; a daemon thread adds them every
    ``interval`` seconds in one pipeline. Thread-safe (the threads pool counts from many threads)."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval if interval is not None else get_settings().metrics_flush_interval
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._buckets: dict[str, Counter[str]] = {}
        self._sums: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, task: str, outcome: str, duration: float | None) -> None:
        """Tally one finished run; the thread that adds tallies to Redis starts with the first."""
        self.tally(task, outcome, duration)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wft-task-metrics", daemon=True)
                self._thread.start()

    def tally(self, task: str, outcome: str, duration: float | None) -> None:
        """Tally one finished run (raises ValueError for an unknown outcome)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        with self._lock:
            self._outcomes[f"{task}{_SEP}{outcome}"] += 1
            if duration is not None:
                buckets = self._buckets.setdefault(task, Counter())
                buckets[_bucket_field(duration)] += 1
                buckets["count"] += 1
                self._sums[task] = self._sums.get(task, 0.0) + duration

    def flush(self, client: redis.Redis | None = None) -> None:
        """Add everything tallied to Redis now, in one round trip. On a Redis error the tally is kept for
        the next flush (logged, never raised)."""
        with self._lock:
            outcomes, buckets, sums = self._outcomes, self._buckets, self._sums
            if not outcomes:
                return
            self._outcomes, self._buckets, self._sums = Counter(), {}, {}
        try:
            with (client or get_redis()).pipeline(transaction=False) as pipe:
                for field, count in outcomes.items():
                    pipe.hincrby(OUTCOMES_KEY, field, count)
                for task, counts in buckets.items():
                    key = DURATION_KEY + task
                    pipe.sadd(DURATION_TASKS_KEY, task)
                    for field, count in counts.items():
                        pipe.hincrby(key, field, count)
                    pipe.hincrbyfloat(key, "sum", sums.get(task, 0.0))
                pipe.execute()
        except redis.RedisError as exc:
            with self._lock:
                self._outcomes.update(outcomes)
                for task, counts in buckets.items():
                    self._buckets.setdefault(task, Counter()).update(counts)
                    self._sums[task] = self._sums.get(task, 0.0) + sums.get(task, 0.0)
            _redis_failed("task outcomes", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()


_tally: PerProcess[TaskTally] = PerProcess("task metrics tally", TaskTally)


def count_task(task: str, outcome: str, duration: float | None) -> None:
    """Tally one finished run of ``task`` (see :func:`record_task`), added to Redis with the others of this
    process within ``METRICS_FLUSH_INTERVAL`` seconds. What workers call for every task."""
    _tally.get().add(task, outcome, duration)


def flush_task_counts() -> None:
    """Add this process's tally to Redis now (a worker process that stops; tests)."""
    tally = _tally.peek()
    if tally is not None:
        tally.flush()


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


def counted_window(settings: Settings | None = None) -> int:
    """Seconds an execution id stays marked as counted: twice the visibility timeout, longer than any
    redelivery of a finished execution's message can come (Redis re-delivers an unacknowledged message after
    one visibility timeout; RabbitMQ at once)."""
    return 2 * (settings or get_settings()).visibility_timeout


def record_execution(
    execution_id: str,
    workflow_id: str,
    status: str,
    duration: float | None,
    steps: Iterable[tuple[str, float]] = (),
    *,
    finished_at: float | None = None,
    client: redis.Redis | None = None,
) -> bool:
    """Count one finished execution of ``workflow_id`` with its ``status`` (one of
    :data:`EXECUTION_STATUSES`), its ``duration`` in seconds (None: unknown) and ``steps``, one
    ``(step type, seconds)`` per step that ran.

    Counted once per ``execution_id``: a marker kept for :func:`counted_window` seconds makes a second call
    (a redelivered message, two workers that ran the same execution) change nothing. An execution that
    ``finished_at`` (Unix time) longer ago than that window is not counted either: it was counted when it
    finished, and its marker has expired since. So a caller may call this for every finished record it
    returns, recorded now or earlier, and a worker killed between storing a record and counting it is made
    good by the redelivery. One atomic script in one round trip.

    Returns True when counted now, False when already counted, too old, or Redis failed (logged, never
    raised: metrics never fail an execution). Raises ValueError for an unknown status.
    """
    if status not in EXECUTION_STATUSES:
        raise ValueError(f"unknown execution status {status!r}; expected one of {EXECUTION_STATUSES}")
    window = counted_window()
    if finished_at is not None and time.time() - finished_at > window:
        return False
    keys = [COUNTED_KEY + execution_id, EXECUTIONS_KEY, EXECUTION_DURATION_INDEX,
            EXECUTION_DURATION_KEY + workflow_id, STEP_DURATION_INDEX]  # fmt: skip
    args: list[str | int | float] = [
        window,
        f"{workflow_id}{_SEP}{status}",
        workflow_id,
        _bucket_field(duration) if duration is not None else "",
        max(duration, 0.0) if duration is not None else 0,
    ]
    for step_type, seconds in steps:
        member = f"{workflow_id}{_SEP}{step_type}"
        keys.append(STEP_DURATION_KEY + member)
        args += [member, _bucket_field(seconds), max(seconds, 0.0)]
    try:
        target = client or get_redis()
        return bool(_count_execution(target, keys=keys, args=args))
    except redis.RedisError as exc:
        _redis_failed(f"execution {execution_id} of {workflow_id}", exc)
        return False


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
            pipe.hgetall(EXECUTIONS_KEY)
            pipe.smembers(EXECUTION_DURATION_INDEX)
            pipe.smembers(STEP_DURATION_INDEX)
            outcomes, retries, dead, tasks, executions, workflows, step_series = pipe.execute()

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

        family = CounterMetricFamily(
            "wft_workflow_executions",
            "Finished workflow executions by workflow and status (completed, failed, cancelled).",
            labels=["workflow", "status"],
        )
        for field, value in sorted(executions.items()):
            labels = _split(field, 2)
            if labels:
                family.add_metric(labels, int(value))
        yield family

        yield _histogram(
            client, "wft_task_duration_seconds", "Task run time, prerun to postrun.", ["task"],
            DURATION_KEY, tasks,
        )  # fmt: skip
        yield _histogram(
            client, "wft_workflow_execution_duration_seconds",
            "Workflow execution run time, first step started to last step finished.", ["workflow"],
            EXECUTION_DURATION_KEY, workflows,
        )  # fmt: skip
        yield _histogram(
            client, "wft_workflow_step_duration_seconds",
            "Run time of the workflow steps that ran (retries included), by workflow and step type.",
            ["workflow", "step_type"], STEP_DURATION_KEY, step_series,
        )  # fmt: skip
        yield from self._queue_depths()

    def _queue_depths(self) -> Iterator[Metric]:
        from fabric.producer import get_message_queue

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
        unacked = _broker_unacked(mq.app)
        if unacked is not None:
            family = GaugeMetricFamily(
                "wft_broker_unacked",
                "Messages taken by workers and not yet acknowledged (running, prefetched, or waiting for "
                "their countdown), all queues together. Redis broker only.",
            )
            family.add_metric([], unacked)
            yield family


def _broker_unacked(app: Any) -> int | None:
    """``HLEN`` of kombu's unacked hash on a Redis broker; None on other brokers."""
    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            key = getattr(channel, "unacked_key", None)
            client = getattr(channel, "client", None)
            if key is None or client is None:
                return None
            return int(client.hlen(key))
    except (redis.RedisError, OperationalError) as exc:
        raise BackendUnavailable(f"could not read the broker's unacked messages: {exc}") from exc


def _histogram(
    client: redis.Redis,
    name: str,
    documentation: str,
    labels: list[str],
    key_prefix: str,
    members: Iterable[bytes],
) -> Metric:
    """A histogram family from one Redis hash per label set (``key_prefix + member``; the member holds the
    label values joined by ``|``), each with a count per bucket, ``count`` and ``sum``."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    series = sorted(m.decode() for m in members)
    with client.pipeline(transaction=False) as pipe:
        for member in series:
            pipe.hgetall(key_prefix + member)
        rows = pipe.execute()
    for member, row in zip(series, rows, strict=True):
        values = member.rsplit(_SEP, len(labels) - 1)
        if len(values) != len(labels):
            continue
        fields = {k.decode(): v for k, v in row.items()}
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound in BUCKETS:
            cumulative += int(fields.get(repr(float(bound)), 0))
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", int(fields.get("count", 0))))
        family.add_metric(values, buckets, float(fields.get("sum", 0.0)))
    return family


def fleet_registry(client: redis.Redis | None = None) -> CollectorRegistry:
    """A registry holding only the fleet collector (no per-process defaults: they would describe the
    scraping process, not the workers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client))
    return registry


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
