"""kombu's Redis transport with one redis-py client per channel, for ``redis://`` brokers.

kombu's Redis channel builds a new ``redis.Redis`` client (on the channel's shared connection pool) for every
operation that does not bring one: every publish, every delivery it records as unacknowledged, every ack.
Building a client is not free in redis-py 6 and later (it sets up its response callbacks each time): py-spy
on a threads-pool worker of the pipeline benchmark put 15% of its main process's GIL time there. A client
is safe to share between threads (each command takes a connection from the pool and gives it back), so
:class:`Channel` builds it once and shares it, and builds it again after kombu drops the channel's pools
(on close, and when a connection error makes it reconnect). Everything else is kombu's own.

:mod:`fabric.celery_config` selects it (``broker_transport``) for ``redis://`` broker URLs only: for
``rediss://`` kombu chooses its TLS defaults by the transport's name, and other brokers have their own
transports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

#: What ``broker_transport`` names to select this transport.
TRANSPORT = "fabric.transport:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, building its synchronous client once instead of once per operation."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None:
            shared = self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
        yield shared

    def _disconnect_pools(self) -> None:
        self._shared_client = None  # it holds the pool being dropped
        super()._disconnect_pools()  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport, with :class:`Channel`."""

    Channel = Channel
