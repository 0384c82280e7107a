"""Tasks that exist only for tests: they sleep, kill their own process, fail on demand, and record what
happened in Redis so a test can see it. Workers load them with ``-I tests.support.tasks``; importing this
module also registers the ``probe`` action on every work queue for the producer."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Literal

from config.queues import WORK_QUEUES
from fabric.contracts import Payload, register_action
from fabric.errors import InvalidInput, TransientError
from fabric.redis_clients import get_redis
from tasks.app import app
from tasks.base import BaseTask


class Probe(Payload):
    action: Literal["probe"]
    tag: str
    sleep: float = 0
    #: While this Redis key exists, the task kills its own process (a poison message).
    kill_while: str | None = None
    #: While this Redis key exists, the task kills its whole worker (main process and pool: a lost host).
    kill_worker_while: str | None = None
    #: While this Redis key exists, the task waits (a task that runs until the test lets it finish).
    block_while: str | None = None
    fail: Literal["permanent", "transient"] | None = None
    value: Any = None


for _queue in WORK_QUEUES:
    register_action(_queue, "probe", Probe, task="testing.probe")


def runs_key(tag: str) -> str:
    return f"test:runs:{tag}"


def effects_key(tag: str) -> str:
    return f"test:effects:{tag}"


@app.task(name="testing.probe", base=BaseTask, bind=True)
def probe(self: BaseTask, payload: dict[str, Any]) -> Any:
    msg = Probe.model_validate(payload)
    client = get_redis()
    request = self.request
    queue = (request.delivery_info or {}).get("routing_key")
    client.rpush(
        runs_key(msg.tag), f"{request.id}|{request.hostname}|{queue}|{time.time()}|{socket.gethostname()}"
    )
    if msg.kill_while and client.exists(msg.kill_while):
        os.kill(os.getpid(), signal.SIGKILL)
    if msg.kill_worker_while and client.exists(msg.kill_worker_while):
        os.killpg(os.getpgid(0), signal.SIGKILL)  # test workers run in a session of their own
    if msg.sleep:
        time.sleep(msg.sleep)
    while msg.block_while and client.exists(msg.block_while):
        time.sleep(0.02)
    if msg.fail == "permanent":
        raise InvalidInput(f"probe {msg.tag} fails permanently by design")
    if msg.fail == "transient":
        raise TransientError(f"probe {msg.tag} fails transiently by design")
    # The effect is keyed by message id, so a redelivery that completes twice still records it once.
    if client.set(f"test:effect-once:{request.id}", 1, nx=True):
        client.rpush(effects_key(msg.tag), request.id)
    return {"tag": msg.tag, "value": msg.value}
