"""One registry for what a process builds once and keeps: clients, services, breakers, writers.

    _search = PerProcess("search service", _build)      # nothing is built at import
    def get_search_service() -> SearchService:
        return _search.get()

Every per-process object of the project is held this way, under one policy:

- **Built lazily**, on first use in a process, from the settings in force then; never at import.
- **One fork policy.** A forked child (a prefork pool process) forgets everything its parent built, without
  closing it, and builds its own on first use: closing would shut down sockets the parent still uses, and a
  lock a parent thread held at the moment of the fork would never be released in the child.
- **One reset.** :func:`reset_all` closes (``close()``, when the object has one) and forgets everything this
  process built, so the next use reads the settings again (tests, a settings reload);
  :meth:`PerProcess.reset` does it for one entry.
- **Replaceable.** :meth:`PerProcess.override` puts an object of the caller's in place of the one the
  factory would build (a test double, an embedding application's own client) until reset.

An entry may be keyed (``get_redis(url)``, ``get_breaker(name)``): ``get(*key)`` builds one per key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.RLock()
_entries: list[PerProcess[Any]] = []


def close_quietly(value: object) -> None:
    """Call ``value.close()`` if it has one; a failure is logged, never raised (the object is going away)."""
    close = getattr(value, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            logger.warning("closing %r failed: %s", value, exc)


class PerProcess(Generic[T]):
    """One per-process object (or one per key), built by ``build(*key)`` on first use.

    ``close`` is called on each object when it is reset (default: its ``close()`` if any)."""

    def __init__(
        self, name: str, build: Callable[..., T], close: Callable[[T], None] = close_quietly
    ) -> None:
        self.name = name
        self._build = build
        self._close = close
        self._values: dict[tuple[Hashable, ...], T] = {}
        with _lock:
            _entries.append(self)

    def get(self, *key: Hashable) -> T:
        """This process's object for ``key``, built on first use."""
        try:
            return self._values[key]
        except KeyError:
            pass
        with _lock:
            if key not in self._values:
                self._values[key] = self._build(*key)
            return self._values[key]

    def peek(self, *key: Hashable) -> T | None:
        """This process's object for ``key`` if it was built, else None (builds nothing)."""
        return self._values.get(key)

    def override(self, value: T, *key: Hashable) -> None:
        """Use ``value`` for ``key`` from now on, in place of what the factory builds (until reset)."""
        with _lock:
            previous = self._values.get(key)
            self._values[key] = value
        if previous is not None and previous is not value:
            self._close(previous)

    def reset(self) -> None:
        """Close and forget every object of this entry that this process built."""
        with _lock:
            values, self._values = list(self._values.values()), {}
        for value in values:
            self._close(value)

    def _forget(self) -> None:
        self._values = {}

    def __repr__(self) -> str:
        return f"PerProcess({self.name!r}, {len(self._values)} built)"


def reset_all() -> None:
    """Close and forget every per-process object this process built (the most recently declared first, so
    a service goes before the clients it may use)."""
    with _lock:
        entries = list(reversed(_entries))
    for entry in entries:
        entry.reset()


@contextlib.contextmanager
def overridden(entry: PerProcess[T], value: T, *key: Hashable) -> Any:
    """``with overridden(entry, value): ...``: ``value`` in place of the entry's object inside the block."""
    entry.override(value, *key)
    try:
        yield value
    finally:
        with _lock:
            if entry._values.get(key) is value:
                del entry._values[key]


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by one of its threads at the fork; nothing in the child holds it.
    global _lock  # noqa: PLW0603 - replaced once per fork, before any thread of the child can use it
    _lock = threading.RLock()
    for entry in _entries:
        entry._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
