"""Counting the requests a process sends to Redis, for tests that check how many round trips a path takes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis.connection


class RoundTrips:
    """Counts the requests the calling thread writes to any Redis connection (a command or a whole
    pipeline is one), letting each through unchanged; other threads (background flushes) are not counted.
    Installed with ``monkeypatch``, so it ends with the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        thread = threading.get_ident()
        real = redis.connection.AbstractConnection.send_packed_command

        def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            if threading.get_ident() == thread:
                self.count += 1
            real(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
