"""Helpers of the fabric tests, and the two brokers the reliability suite runs against.

``broker`` is parametrised: a test module that overrides ``mq`` to request it first runs each of its tests on
Redis and on a private RabbitMQ (started once per session, on free ports), with the producer and every
worker the test starts pointed at it. Results, delivery counts and dead letters stay in Redis::

    @pytest.fixture
    def mq(broker: str, mq: MessageQueue) -> MessageQueue:
        return mq
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

import tests.support.tasks  # noqa: F401 - registers the probe action with the producer
from config import get_settings
from config.settings import Settings
from fabric import celery_config
from fabric.producer import MessageQueue
from tests.support.fleet import reset_process_clients
from tests.support.servers import RabbitMQServer, wait_until
from tests.support.tasks import runs_key

BROKERS = ("redis", "rabbitmq")


def configured_app(settings: Settings | None = None) -> Celery:
    """A plain Celery app with the fleet's configuration (``celery_config.build``): its result backend,
    transport and routes, without the worker's tasks. The caller closes it."""
    app = Celery("fabric-test", set_as_current=False)
    app.conf.update(celery_config.build(settings or get_settings()))
    return app


@pytest.fixture(scope="session")
def rabbitmq_server(session_root: Path) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(session_root / "rabbitmq-session")
    server.start()
    yield server
    server.stop()
    server.remove()


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The broker this test runs on: ``BROKER_URL`` for the producer and the workers; its queues empty."""
    if request.param == "rabbitmq":
        server: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        monkeypatch.setenv("BROKER_URL", server.url)
        reset_process_clients()
        _purge_rabbitmq()
    else:
        monkeypatch.delenv("BROKER_URL", raising=False)  # Redis: REDIS_URL, emptied by redis_client
        reset_process_clients()
    return str(request.param)


def _purge_rabbitmq() -> None:
    """Declare every queue as the workers do and drop what an earlier test left in it."""
    from fabric.producer import make_producer_app

    app = make_producer_app()
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue(channel).declare()
            channel.queue_purge(queue.name)


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
