"""Celery's Redis result backend, as workers and producers use it.

:class:`RedisResultBackend` (workers) stores what Celery's own does, in one round trip instead of two, with
one exception: a task that sets
``result_keeps_arguments = False`` (the bulk envelope consumers) is stored without its ``args`` and
``kwargs``. With ``result_extended`` on, Celery copies every task's arguments into its result, once for
STARTED and once for SUCCESS, and reads the STARTED copy back before writing SUCCESS: for an envelope of 500
documents that is three JSON passes over the whole envelope and a second copy of it kept in Redis for as
long as results are kept, for data whose every item has a status of its own
(:mod:`fabric.statuses`) and is already written where it belongs.

Celery stores a state with a GET (to leave a SUCCESS already stored alone: a redelivered task must not
overwrite it) and then a pipelined SET and PUBLISH: two round trips for every state of every task.
:data:`COUNT_AND_STORE_LUA` does the same check, the SET (with the same expiry) and the PUBLISH in one
script, so a state costs one round trip and the check and the write are atomic.

The same script counts deliveries (:mod:`fabric.deliveries`): a first delivery that ends within
:data:`fabric.starts.START_GRACE` seconds has its delivery counted with its final state, a longer one with
its STARTED state, a redelivery before its body runs (see :mod:`fabric.starts`).

Celery's Redis backend also subscribes to a pub/sub channel for every task a process sends (a round trip per
message, and a connection that stays open), so that a later ``AsyncResult.get()`` wakes up at once. Neither
producers (they read statuses with ``get_status``) nor workers (a task never waits for another's result)
block on results, so this one does not: an ``AsyncResult.get()`` still works, subscribing when it is
called. Other result backends (``RESULT_BACKEND`` not Redis) are Celery's own, unchanged.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.app.task import Context
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend

from fabric.redis_clients import LuaScript
from fabric.starts import DeliveryCount, pending_starts

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def backend_url(url: str, backend: type[RedisBackend]) -> str:
    """``url`` with ``backend`` as the class Celery builds for it (only for Redis URLs)."""
    if url.startswith(REDIS_SCHEMES):
        return f"{backend.__module__}:{backend.__qualname__}+{url}"
    return url


#: A Lua function, ``store_state(key, value, ttl)``: unless ``key`` holds a SUCCESS already, SET it (with
#: an expiry when ``ttl`` > 0) and PUBLISH it to the key's channel (``AsyncResult.get()`` listens there).
#: Returns 1 when stored, 0 when a SUCCESS was kept. A stored value that is not JSON (it is always ours)
#: is overwritten, as Celery would. Scripts that store a state begin with it.
STORE_STATE_FUNCTION = """
local function store_state(key, value, ttl)
  local current = redis.call('GET', key)
  if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
  end
  ttl = tonumber(ttl)
  if ttl and ttl > 0 then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
  return 1
end
"""

#: Count one delivery, store one state, or both, in one round trip: the one script that writes delivery
#: counts and task states. KEYS[1]: the task's key, ARGV[1]: the encoded meta ('': store none), ARGV[2]: its
#: TTL. KEYS[2]: the message's delivery counts, ARGV[3]: the attempt ('': count none), ARGV[4]: their TTL,
#: ARGV[5]: the lowest the attempt's count may be after this delivery. Returns the attempt's count (0 when
#: none was counted) and 1 when the state was stored (0 when a SUCCESS was kept, or none was given).
COUNT_AND_STORE_LUA = (
    STORE_STATE_FUNCTION
    + """
local count = 0
if ARGV[3] ~= '' then
  count = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  local minimum = tonumber(ARGV[5]) or 1
  if count < minimum then
    redis.call('HSET', KEYS[2], ARGV[3], minimum)
    count = minimum
  end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local stored = 0
if ARGV[1] ~= '' then stored = store_state(KEYS[1], ARGV[1], ARGV[2]) end
return {count, stored}
"""
)
_count_and_store_script = LuaScript(COUNT_AND_STORE_LUA)


def count_and_store(
    client: Any,
    *,
    state: tuple[str, str, int] | None = None,
    count: DeliveryCount | None = None,
    minimum: int = 1,
) -> tuple[int, bool]:
    """Count one delivery (``count``, raised to ``minimum``) and store a task state (``state``: its key, the
    encoded meta and the TTL in seconds, 0 for none), either or both, in one round trip. Returns the
    attempt's delivery count (0 when ``count`` is None) and whether the state was stored (a stored SUCCESS
    is never replaced)."""
    key, value, ttl = state or ("", "", 0)
    counts_key, attempt, counts_ttl = (count.key, str(count.attempt), count.ttl) if count else ("", "", 0)
    # Both keys are always declared (a script may touch only the keys it is given); a missing one repeats
    # the other, which the script then leaves alone.
    keys = [key or counts_key, counts_key or key]
    reply = _count_and_store_script(client, keys=keys, args=[value, ttl, attempt, counts_ttl, minimum])
    delivered, stored = reply
    return int(delivered), bool(int(stored))


def text(value: str | bytes) -> str:
    """A key or an encoded value as ``str`` (Celery hands out either)."""
    return value.decode() if isinstance(value, bytes) else value


def expiry_seconds(expires: Any) -> int:
    """Celery's ``result_expires`` as whole seconds for SET EX (0: keep forever)."""
    if expires is None:
        return 0
    seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else float(expires)
    return max(int(seconds), 0) if seconds else 0


class RedisResultBackend(RedisBackend):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's Redis backend in one round trip per state, leaving out the arguments of tasks that ask, and
    subscribing to no result it is not asked to wait for."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # A SUBSCRIBE now and an UNSUBSCRIBE later for every follow-up, retry and dead letter a worker sends.
        return None

    def on_result_fulfilled(self, result: Any) -> None:
        # Nothing was subscribed, so there is nothing to unsubscribe (Celery would open a pub/sub
        # connection just to do it when an AsyncResult is garbage-collected).
        return None

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        # A group registers every member it sends, weakly, for the group's ready promise: a subscription
        # to each member's channel. In a process that never waits on the group (a worker sending an
        # execution's follow-ups, a producer) nothing reads or removes those subscriptions: measured, a
        # pool process held one per follow-up it had sent (900 after 600 executions), each SUCCESS then
        # published to it, until Redis dropped the connection at its pub/sub output limit. Waiting
        # (``get()``, ``GroupResult.get()``) registers strongly and subscribes as before.
        if weak:
            return result
        return super().add_pending_result(result, weak=weak, start_drainer=start_drainer)

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        return super().store_result(
            task_id, result, state, traceback=traceback, request=self._stored_request(request), **kwargs
        )

    def _stored_request(self, request: Any) -> Any:
        if request is not None:
            task = self.app.tasks.get(getattr(request, "task", None) or "")
            if task is not None and not getattr(task, "result_keeps_arguments", True):
                return Context(vars(request), args=None, kwargs=None)
        return request

    def meta_for(self, task_id: str, result: Any, state: str, request: Any = None) -> str:
        """The encoded meta Celery would store for ``state`` (what :meth:`store_result` writes), for a caller
        that writes it in a script of its own (the base task stores STARTED with its delivery count)."""
        meta = self._get_result_meta(
            result=self.encode_result(result, state),
            state=state,
            traceback=None,
            request=self._stored_request(request),
        )
        meta["task_id"] = text(task_id)
        return text(self.encode(meta))

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        count = pending_starts.finish(text(task_id))  # first, so that no STARTED is written after this
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = text(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            if count is not None:
                self.ensure(self._count, (count,))
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(
            self._store_state, (self.get_key_for_task(task_id), value, expiry_seconds(expires), count)
        )
        return result

    def _store_state(self, key: Any, value: Any, ttl: int, count: DeliveryCount | None = None) -> Any:
        return count_and_store(self.client, state=(text(key), text(value), ttl), count=count)

    def process_cleanup(self) -> None:
        # After every task: a first delivery that stored no state (Ignore, Reject, ignore_result) is counted
        # now, and its STARTED state is never written.
        count = pending_starts.finish_current()
        if count is not None:
            self.ensure(self._count, (count,))
        super().process_cleanup()

    def _count(self, count: DeliveryCount) -> Any:
        return count_and_store(self.client, count=count)
