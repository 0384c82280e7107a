"""Per-workflow statistics: runs by status, success rate, duration p50/p95, last run.

Counted once per execution even when messages are redelivered: one Lua script adds the execution id to a
set and updates the counters only when the id is new, atomically, in one round trip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import redis

from fabric import keys
from fabric.contracts import FINISHED_STATUSES
from fabric.errors import BackendUnavailable, InvalidInput
from fabric.redis_clients import get_redis

PREFIX = keys.STATS
STATUSES = FINISHED_STATUSES  # only finished executions are counted

# KEYS: seen set, counters hash, durations zset. ARGV: execution id, status, duration ms ('' if none),
# finished-at timestamp (epoch seconds, '' if none).
_RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'runs', 1)
redis.call('HINCRBY', KEYS[2], 'status:' .. ARGV[2], 1)
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[1])
end
if ARGV[4] ~= '' then
  local last = redis.call('HGET', KEYS[2], 'last_run')
  if (not last) or tonumber(last) < tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[2], 'last_run', ARGV[4], 'last_status', ARGV[2], 'last_execution', ARGV[1])
  end
end
redis.call('SADD', KEYS[4], ARGV[5])
return 1
"""


def _keys(workflow_id: str) -> list[str]:
    base = f"{PREFIX}{workflow_id}"
    return [f"{base}:seen", f"{base}:counters", f"{base}:durations", f"{PREFIX}workflows"]


def _timestamp(value: object) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, datetime):
        return repr(value.timestamp())
    if isinstance(value, str):
        try:
            return repr(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise InvalidInput(f"completed_at {value!r} is not an ISO 8601 time") from None
    raise InvalidInput(f"completed_at must be an ISO 8601 string, got {type(value).__name__}")


def _duration_ms(execution: Mapping[str, Any]) -> str:
    start, end = _timestamp(execution.get("started_at")), _timestamp(execution.get("completed_at"))
    if not start or not end:
        return ""
    return repr(max(0.0, (float(end) - float(start)) * 1000.0))


class WorkflowStats:
    """Statistics kept in Redis (``REDIS_URL``), readable from any process."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client

    @property
    def client(self) -> redis.Redis:
        return self._client or get_redis()

    def record(self, workflow_id: str, execution: Mapping[str, Any]) -> bool:
        """Count one finished execution (``id`` or ``execution_id``, ``status``, start and completion times).

        Returns False when this execution was already counted. Unfinished executions are refused.
        """
        return self.record_many([(workflow_id, execution)]) == 1

    def record_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Count many executions in one round trip; returns how many were new."""
        script = self.client.register_script(_RECORD)
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for workflow_id, execution in items:
            execution_id = execution.get("id") or execution.get("execution_id")
            status = execution.get("status")
            if not execution_id:
                raise InvalidInput(f"execution of workflow {workflow_id!r} has no id")
            if status not in STATUSES:
                raise InvalidInput(
                    f"execution {execution_id!r} has status {status!r}; only finished executions "
                    f"({', '.join(STATUSES)}) are counted"
                )
            args = [execution_id, status, _duration_ms(execution), _timestamp(execution.get("completed_at")),
                    workflow_id]  # fmt: skip
            script(keys=_keys(workflow_id), args=args, client=pipe)
            queued += 1
        if not queued:
            return 0
        try:
            return sum(int(r) for r in pipe.execute())
        except redis.RedisError as exc:
            raise BackendUnavailable(f"could not update workflow statistics: {exc}") from exc

    def get(self, workflow_id: str) -> dict[str, Any]:
        """``{"workflow_id", "runs", "by_status", "success_rate", "duration_ms": {"p50", "p95"}, "last_run",
        "last_status"}``; zeros for a workflow never run."""
        _, counters_key, durations_key, _ = _keys(workflow_id)
        try:
            counters = {
                k.decode(): v.decode()
                for k, v in cast("dict[bytes, bytes]", self.client.hgetall(counters_key)).items()
            }
            n = int(self.client.zcard(durations_key))
            p50 = self._percentile(durations_key, n, 0.50)
            p95 = self._percentile(durations_key, n, 0.95)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"could not read workflow statistics: {exc}") from exc
        runs = int(counters.get("runs", 0))
        by_status = {s: int(counters.get(f"status:{s}", 0)) for s in STATUSES}
        last_run = counters.get("last_run")
        return {
            "workflow_id": workflow_id,
            "runs": runs,
            "by_status": by_status,
            "success_rate": (by_status["completed"] / runs) if runs else None,
            "duration_ms": {"p50": p50, "p95": p95},
            "last_run": datetime.fromtimestamp(float(last_run)).astimezone().isoformat()
            if last_run
            else None,
            "last_status": counters.get("last_status"),
            "last_execution": counters.get("last_execution"),
        }

    def _percentile(self, key: str, n: int, q: float) -> float | None:
        """Nearest-rank percentile of the durations sorted set."""
        if n == 0:
            return None
        rank = max(0, math.ceil(q * n) - 1)
        ((_, score),) = cast(
            "list[tuple[bytes, float]]", self.client.zrange(key, rank, rank, withscores=True)
        )
        return float(score)

    def workflows(self) -> list[str]:
        return sorted(m.decode() for m in cast("set[bytes]", self.client.smembers(f"{PREFIX}workflows")))


def get_workflow_stats(workflow_id: str) -> dict[str, Any]:
    """The statistics of ``workflow_id`` (see :meth:`WorkflowStats.get`)."""
    return WorkflowStats().get(workflow_id)
