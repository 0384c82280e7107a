"""Lost-worker recovery on Redis: every worker holds a lease on the messages it was given, and the live
workers put back on their queues the messages of a worker whose lease ran out.

Why
---
kombu's Redis transport emulates acknowledgements. A message given to a worker is copied into the
``unacked`` hash (delivery tag -> message) and the ``unacked_index`` sorted set (delivery tag -> time it was
given) and removed from both when it is acknowledged. A worker that dies without acknowledging (kill -9 of
the whole worker, a lost host or container) leaves its messages there, and kombu puts them back only when
they are older than the visibility timeout. That timeout must outlast the longest time a *live* worker may
hold a message (a countdown of up to ``MAX_DELAY_SECONDS``, then up to ``TASK_TIME_LIMIT`` of running):
over an hour by default. RabbitMQ needs none of this: it requeues as soon as the consumer's connection drops.

How
---
A consumer bootstep (:class:`WorkerLease`) runs one thread in the worker's main process (a thread, so a
long task in a solo or threads pool cannot hold it up). It:

1. every ``WORKER_LOST_AFTER / 5`` seconds, renews the worker's lease in one transaction on the broker's
   Redis: ``wft:leases`` (sorted set: lease id -> expiry, in the Redis server's clock,
   ``4/5 WORKER_LOST_AFTER`` ahead) and ``wft:lease:<id>`` (set: the delivery tags the worker's consumer
   holds, read from kombu's own QoS state, which counts messages waiting for their countdown as well as
   running ones);
2. every ``WORKER_LOST_AFTER / 10`` seconds, looks for lost messages on the fleet's queues that no live
   lease claims: those a lease that ran out had claimed, and any tag in ``unacked_index`` given out longer
   than a lease lasts ago (a live worker claims each message at its next renewal, so such a message was
   given to a worker that died before it could claim it). Each lost message goes back to the head of its
   queue with kombu's ``QoS.restore_by_tag`` (one transaction: of two workers restoring the same tag,
   only one puts it back), marked redelivered; the base task counts the new delivery as it counts any
   other, so a message that kills every worker still ends in ``dead_letter``.

A worker killed at time *t* renewed last before *t*; its lease ran out by ``t + 4/5 WORKER_LOST_AFTER``,
and the next sweep of any live worker restores its messages: by ``t + 9/10 WORKER_LOST_AFTER``. A message
it was given too shortly before it died to have claimed it comes back a lease after it was given, by the
same bound. A worker that starts sweeps at once, so a fleet that lost every worker recovers as soon as one
comes back. Kombu's visibility timeout stays as the last resort: it restores anything left unacknowledged
for that long, whoever holds it.

The only state is kombu's (``unacked``, ``unacked_index``) and two keys per worker; no queue of our own.
It assumes that every worker consuming the fleet's queues runs this bootstep (every ``tasks.app`` worker
does), and that worker clocks are within a lease's length (48 s by default) of the Redis server's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from celery import bootsteps

from config import QUEUES, get_settings
from fabric import keys

logger = logging.getLogger(__name__)

LEASES_KEY = keys.LEASES
LEASE_PREFIX = keys.LEASE
#: Most lost messages one sweep restores; the rest wait for the next sweep.
SWEEP_LIMIT = 1000

# KEYS: unacked_index, unacked, leases.  ARGV: lease prefix, lease seconds, limit, queue names...
# Returns {lost delivery tags, ids of the leases that ran out since the last sweep}.
_SWEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf')
local function claimed(tag)
  for _, id in ipairs(live) do
    if redis.call('SISMEMBER', ARGV[1] .. id, tag) == 1 then return true end
  end
  return false
end
local function ours(tag)
  -- kombu stores [message, exchange, routing_key] as JSON: only the fleet's own queues are touched.
  local raw = redis.call('HGET', KEYS[2], tag)
  if not raw then
    redis.call('ZREM', KEYS[1], tag)  -- acknowledged meanwhile, or a stale index entry: nothing to restore
    return false
  end
  for i = 4, #ARGV do
    local tail = '"' .. ARGV[i] .. '"]'
    if string.sub(raw, -#tail) == tail then return true end
  end
  return false
end
local lost, seen = {}, {}
local function consider(tag)
  if not seen[tag] then
    seen[tag] = true
    if not claimed(tag) and ours(tag) then lost[#lost + 1] = tag end
  end
end
-- What the leases that just ran out had claimed: at once.
for _, id in ipairs(expired) do
  for _, tag in ipairs(redis.call('SMEMBERS', ARGV[1] .. id)) do consider(tag) end
  redis.call('DEL', ARGV[1] .. id)
end
-- Given out longer than a lease ago and claimed by no live lease: its worker died before claiming it.
local ceiling = now - tonumber(ARGV[2])
for _, tag in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ceiling, 'LIMIT', 0, tonumber(ARGV[3]))) do
  consider(tag)
end
return {lost, expired}
"""

# KEYS: leases, this lease's claims.  ARGV: lease id, lease seconds, tags...
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 5000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 4999, #ARGV)))
end
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[2]) * 2))
return #ARGV - 2
"""


def timings(worker_lost_after: float) -> tuple[float, float, float]:
    """``(renewal interval, sweep interval, lease length)`` in seconds for ``WORKER_LOST_AFTER``: a lease
    outlasts four renewals, and a sweep restores a lost worker's messages within half a renewal interval
    after its lease ran out, so they are back within nine tenths of ``WORKER_LOST_AFTER``."""
    renew = worker_lost_after / 5
    return renew, renew / 2, 4 * renew


def held_tags(qos: Any) -> list[str]:
    """The delivery tags a kombu virtual-transport QoS holds: given to its consumer, not yet acknowledged.

    ``_delivered`` is changed only by the consuming thread and ``_dirty`` (acknowledged, not yet flushed)
    by any thread; copying a dict or set of strings is atomic under the GIL, so the copies are consistent
    enough (a tag acknowledged meanwhile is claimed one interval too long, which is harmless).
    """
    for _ in range(5):
        try:
            delivered = list(qos._delivered)
            dirty = set(qos._dirty)
        except RuntimeError:  # changed size while copied: copy again
            continue
        return [str(tag) for tag in delivered if tag not in dirty]
    return []


class LeaseKeeper:
    """Renews one worker's lease and sweeps for lost messages, in a thread of its own.

    ``holder()`` returns the kombu QoS whose held messages the lease claims (None: keep the last claims).
    Works on its own kombu connection to the broker, never on the consumer's.
    """

    def __init__(
        self, app: Any, hostname: str, holder: Any, worker_lost_after: float, queues: Iterable[str] = QUEUES
    ) -> None:
        self.app = app
        self.lease_id = f"{hostname}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.holder = holder
        self.interval, self.sweep_interval, self.lease_seconds = timings(worker_lost_after)
        self.queues = [str(q) for q in queues]
        self._claims: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._channel: Any = None

    # --- the two operations ------------------------------------------------------------------------
    def renew(self) -> int:
        """Claim the messages held now, for one more lease. Returns how many are claimed."""
        qos = self.holder()
        if qos is not None:
            self._claims = held_tags(qos)
        with self._channel.conn_or_acquire() as client:
            return int(
                client.eval(
                    _RENEW, 2, LEASES_KEY, LEASE_PREFIX + self.lease_id, self.lease_id, self.lease_seconds,
                    *self._claims,
                )
            )  # fmt: skip

    def sweep(self) -> list[str]:
        """Put back on their queues the messages no live worker claims. Returns their delivery tags."""
        channel = self._channel
        with channel.conn_or_acquire() as client:
            lost, expired = client.eval(
                _SWEEP, 3, channel.unacked_index_key, channel.unacked_key, LEASES_KEY,
                LEASE_PREFIX, self.lease_seconds, SWEEP_LIMIT, *self.queues,
            )  # fmt: skip
            for lease in expired:
                logger.warning(
                    "worker lease %s ran out (the worker stopped renewing it: lost or stopped)", _text(lease)
                )
            tags = [_text(tag) for tag in lost]
            for tag in tags:
                channel.qos.restore_by_tag(tag, client=client)
        if tags:
            logger.warning(
                "restored %d message(s) that a lost worker held to their queues: %s",
                len(tags), ", ".join(tags[:10]) + (" ..." if len(tags) > 10 else ""),
            )  # fmt: skip
        return tags

    # --- the thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wft-worker-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and drop the lease (a clean shutdown: kombu has put back what the worker held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        if self._channel is None:
            return
        try:
            with self._channel.conn_or_acquire() as client:
                client.zrem(LEASES_KEY, self.lease_id)
                client.delete(LEASE_PREFIX + self.lease_id)
        except Exception as exc:  # the broker is gone: the lease runs out by itself
            logger.warning("could not drop worker lease %s: %s", self.lease_id, exc)
        self._close()

    def _run(self) -> None:
        renewed_at = float("-inf")
        while not self._stop.is_set():
            try:
                if self._channel is None:
                    self._connection = self.app.connection_for_write()
                    self._channel = self._connection.default_channel
                if time.monotonic() - renewed_at >= self.interval - self.sweep_interval / 2:
                    self.renew()
                    renewed_at = time.monotonic()
                self.sweep()
            except Exception as exc:
                # The broker is unreachable or busy: try again next time. If renewals keep failing for a
                # whole lease, other workers take this worker for lost, as they should.
                logger.warning("worker lease %s: renewal or sweep failed: %s", self.lease_id, exc)
                self._close()
            self._stop.wait(self.sweep_interval)

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception as exc:
                logger.debug("releasing the lease connection failed: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WorkerLease(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """Consumer bootstep: the worker's lease on the messages it holds (Redis brokers only)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.keeper: LeaseKeeper | None = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        if c.connection.transport.driver_type != "redis" or self.keeper is not None:
            return  # other brokers requeue on their own; a consumer restart keeps the running keeper

        def holder() -> Any:
            consumer = c.task_consumer
            return consumer.channel.qos if consumer is not None else None

        self.keeper = LeaseKeeper(c.app, c.hostname, holder, get_settings().worker_lost_after)
        self.keeper.start()
        logger.info(
            "worker lease %s: renewed every %.1f s; a lost worker's messages are back within %s s",
            self.keeper.lease_id, self.keeper.interval, get_settings().worker_lost_after,
        )  # fmt: skip

    # ``stop`` runs when the consumer restarts (connection lost) and at the start of a warm shutdown,
    # while the pool may still be finishing tasks: the lease keeps claiming until ``shutdown``.

    def shutdown(self, c: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None


def live_leases(client: Any) -> Sequence[str]:
    """Ids of the worker leases that have not run out (``<nodename>/<pid>/<random>``)."""
    now = client.time()
    members = client.zrangebyscore(LEASES_KEY, f"({now[0] + now[1] / 1e6}", "+inf")
    return [_text(m) for m in members]
