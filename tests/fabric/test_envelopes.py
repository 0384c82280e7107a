"""How bulk envelopes travel (packed items) and how their messages' statuses are recorded and read."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
import redis

from fabric import envelopes
from fabric.envelopes import pack_items, unpack_items
from fabric.errors import InvalidInput
from fabric.statuses import item_id, item_states, item_status, record_envelope, split_item_id
from tasks.bulk import decode_items

ITEMS = [
    {"action": "index_log", "payload": {"entry": {"message": f"naïve entry {i}", "n": i}}} for i in range(50)
]


def test_packed_items_come_back_unchanged_and_smaller() -> None:
    packed = pack_items(ITEMS)
    assert unpack_items(packed) == ITEMS
    assert len(packed) < len(json.dumps(ITEMS)) / 3  # repetitive documents compress well
    assert decode_items(packed_items=packed) == ITEMS
    assert decode_items(items=ITEMS) == ITEMS


@pytest.mark.parametrize(
    ("packed", "expected"),
    [
        (42, "must be a string, got int"),
        ("not base64!", "not base64 zlib data"),
        (base64.b64encode(b"plain bytes").decode(), "not base64 zlib data"),
        (base64.b64encode(zlib.compress(b"{not json")).decode(), "not valid JSON"),
        (base64.b64encode(zlib.compress(b'{"a": 1}')).decode(), "must be a JSON array, got dict"),
        (base64.b64encode(zlib.compress(b"[1, 2, 3]")[:-6]).decode(), "truncated"),
    ],
)
def test_bad_packed_items_are_refused_with_the_reason(packed: object, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        unpack_items(packed)


def test_a_packed_envelope_that_inflates_too_far_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelopes, "MAX_UNPACKED_BYTES", 1_000)
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * 100_000 + b"]")).decode()
    with pytest.raises(InvalidInput, match="inflate to more than 1000 bytes"):
        unpack_items(bomb)


@pytest.mark.parametrize("items", [[{"payload": {}}], [{"action": 1, "payload": {}}], ["x"], {"a": 1}, None])
def test_envelope_items_of_the_wrong_shape_are_refused(items: object) -> None:
    with pytest.raises(InvalidInput, match="envelope items must be a list"):
        decode_items(items=items)


def test_message_ids_name_their_envelope_and_position() -> None:
    assert item_id("0b7c-e1", 7) == "0b7c-e1.7"
    assert split_item_id("0b7c-e1.7") == ("0b7c-e1", 7)
    for plain in ("0b7c-e1", "ok-1", "a.b", ".3", "x.-1", "x.²", "x.٣"):
        assert split_item_id(plain) is None


def test_one_record_per_envelope_gives_every_message_its_status(redis_client: redis.Redis) -> None:
    envelope = "env-1"
    ids = [item_id(envelope, i) for i in range(4)]
    failure = {"type": "InvalidInput", "message": "log entry['level'] is required"}
    outcome = {"queue": "indexing_tasks", "date_done": 1.5, "attempts": 2}
    record_envelope(redis_client, envelope, ids, outcome, {2: failure}, ttl_seconds=60)

    assert [k.decode() for k in redis_client.keys("wft:*")] == ["wft:envelope:env-1"]
    assert 0 < redis_client.ttl("wft:envelope:env-1") <= 60
    assert item_states(redis_client, [*ids, item_id(envelope, 4), item_id("other", 0)]) == [
        "SUCCESS", "SUCCESS", "DEAD_LETTERED", "SUCCESS", "PENDING", "PENDING",
    ]  # fmt: skip
    assert item_status(redis_client, ids[1]) == {
        "id": ids[1], "state": "SUCCESS", "queue": "indexing_tasks", "envelope": envelope, "date_done": 1.5,
        "attempts": 2,
    }  # fmt: skip
    dead = item_status(redis_client, ids[2])
    assert dead is not None and dead["state"] == "DEAD_LETTERED" and dead["error"] == failure


def test_messages_with_ids_of_their_own_get_records_of_their_own(redis_client: redis.Redis) -> None:
    # An envelope built by another producer: the ids do not follow the E.i scheme, or only look like it.
    ids = ["ok-0", "other-envelope.3", "env-2.2"]
    outcome = {"queue": "indexing_tasks", "date_done": 2.0, "attempts": 1}
    record_envelope(redis_client, "env-2", ids, outcome, {0: {"type": "X", "message": "bad"}}, ttl_seconds=60)
    assert item_states(redis_client, ids) == ["DEAD_LETTERED", "SUCCESS", "SUCCESS"]
    status = item_status(redis_client, "other-envelope.3")
    assert status is not None and status["envelope"] == "env-2"
    assert item_status(redis_client, "never-sent") is None


def test_results_of_bulk_envelopes_leave_their_items_out(redis_client: redis.Redis) -> None:
    from celery.app.task import Context

    import tasks.bulk  # noqa: F401 - registers the bulk tasks
    from fabric.result_backend import RedisResultBackend
    from tasks.app import app

    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    packed = {"packed_items": pack_items(ITEMS)}
    for task_id, name, kwargs in [
        ("envelope-1", "indexing_tasks.bulk", packed),
        ("single-1", "indexing_tasks.index_log", {"payload": ITEMS[0]["payload"]}),
    ]:
        request = Context(task=name, args=[], kwargs=kwargs, delivery_info={"routing_key": "indexing_tasks"})
        backend.store_result(task_id, {"ok": True}, "SUCCESS", request=request)
    envelope, single = backend.get_task_meta("envelope-1"), backend.get_task_meta("single-1")
    assert envelope["kwargs"] is None and envelope["name"] == "indexing_tasks.bulk"
    assert envelope["queue"] == "indexing_tasks" and envelope["result"] == {"ok": True}
    assert single["kwargs"] == {"payload": ITEMS[0]["payload"]}  # other tasks keep Celery's extended result


def test_a_lone_surrogate_travels_in_an_envelope_as_in_a_single_message() -> None:
    items = [{"action": "index_log", "payload": {"entry": {"message": "half a pair: \ud800"}}}]
    assert envelopes.unpack_items(envelopes.pack_items(items)) == items
