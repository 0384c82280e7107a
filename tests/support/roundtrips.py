"""Counting the requests a process sends to Redis, for tests that check how many round trips a path takes."""

from __future__ import annotations

from typing import Any

import pytest
import redis.connection


class RoundTrips:
    """Counts the requests this process writes to any Redis connection (a command or a whole pipeline is
    one), letting each through unchanged. Installed with ``monkeypatch``, so it ends with the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = redis.connection.AbstractConnection.send_packed_command

        def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            real(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
