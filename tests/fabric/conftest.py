from __future__ import annotations

from typing import Any

import redis

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from services.message_queue import MessageQueue
from tests.support.servers import wait_until
from tests.support.tasks import runs_key


def runs(client: redis.Redis, tag: str) -> list[dict[str, str]]:
    """What ``testing.probe`` recorded for ``tag``, in order of starting."""
    out = []
    for raw in client.lrange(runs_key(tag), 0, -1):
        message_id, hostname, queue, started, _ = raw.decode().split("|")
        out.append({"id": message_id, "hostname": hostname, "queue": queue, "started": started})
    return out


def wait_for_state(
    mq: MessageQueue, message_id: str, states: set[str], timeout: float = 30
) -> dict[str, Any]:
    holder: dict[str, Any] = {}

    def reached() -> bool:
        holder.update(mq.get_status(message_id))
        return holder["state"] in states

    try:
        wait_until(reached, timeout=timeout, interval=0.1, what=f"{message_id} to reach {states}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last status: {holder}") from None
    return holder
