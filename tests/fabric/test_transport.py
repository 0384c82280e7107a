"""The Redis transport (fabric.transport): selected for redis:// brokers only, one redis-py client per
channel across publishes, deliveries and acks, rebuilt after kombu drops the channel's pools. Against the
session's real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu import Exchange, Producer
from kombu import Queue as KombuQueue

from config import get_settings
from fabric import celery_config, transport
from tests.fabric.conftest import configured_app


def test_redis_brokers_get_the_shared_client_channel_and_others_kombus_own() -> None:
    settings = get_settings()
    app = configured_app(settings)
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, transport.Channel)
    app.close()
    for url in ("amqp://guest:guest@127.0.0.1:5672//", "rediss://127.0.0.1:6380/0"):
        conf = celery_config.build(settings.model_copy(update={"broker_url": url}))
        assert conf["broker_transport"] is None, url  # kombu picks by the URL's scheme


def test_one_client_serves_every_publish_delivery_and_ack(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    original = transport.Channel._create_client

    def counting(self: transport.Channel, asynchronous: bool = False) -> Any:
        client = original(self, asynchronous=asynchronous)
        if not asynchronous:
            built.append(client)
        return client

    monkeypatch.setattr(transport.Channel, "_create_client", counting)
    app = configured_app()
    exchange = Exchange("transport-test", type="direct")
    queue = KombuQueue("transport-test", exchange, routing_key="transport-test")
    with app.connection_for_write() as conn:
        channel = conn.channel()
        queue(channel).declare()
        producer = Producer(channel, exchange=exchange, routing_key="transport-test", serializer="json")
        for i in range(50):
            producer.publish({"n": i})
        assert redis_client.llen("transport-test") == 50
        received = []
        for _ in range(50):
            message = queue(channel).get(no_ack=False)  # recorded as unacknowledged, then acked
            assert message is not None
            received.append(message.payload["n"])
            message.ack()
        assert sorted(received) == list(range(50))
        assert redis_client.hlen("unacked") == 0  # every ack reached Redis
        assert len(built) == 1  # kombu alone builds one per publish, per delivery and per ack: 150

        channel._disconnect_pools()  # what kombu does on close and after a connection error
        producer.publish({"n": 50})
        assert redis_client.llen("transport-test") == 1
        assert len(built) == 2 and built[1] is not built[0]
        channel.close()
    app.close()
