"""The high-volume path: enqueue_many and the bulk consumers, with real workers."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
from pathlib import Path

import pytest
import redis

from config import get_settings
from fabric.envelopes import unpack_items
from fabric.errors import InvalidInput
from fabric.producer import MessageQueue
from fabric.statuses import item_id, item_states
from services.search.sqlite import SqliteSearchService
from tests.fabric.conftest import wait_for_state
from tests.support.fleet import StartWorker
from tests.support.servers import wait_until


def log(i: int, service: str = "bulk-test") -> dict[str, object]:
    return {
        "action": "index_log",
        "entry": {"id": f"{service}-{i}", "timestamp": "2024-05-01T12:00:00Z", "level": "INFO",
                  "message": f"bulk entry number {i} payment processed", "service": service},
    }  # fmt: skip


def test_one_bad_payload_refuses_the_whole_call(mq: MessageQueue) -> None:
    payloads = [log(0), log(1), {"action": "index_log", "entry": {"level": "INFO"}}, log(3)]
    with pytest.raises(InvalidInput, match=r"payloads\[2\]: .*payload.entry.timestamp"):
        mq.enqueue_many("indexing_tasks", payloads)
    assert mq.queue_stats("indexing_tasks")["pending"] == 0
    with pytest.raises(InvalidInput, match="unknown queue"):
        mq.enqueue_many("nope", [log(0)])


def test_payloads_travel_in_envelopes_and_are_tracked_one_by_one(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    n, size = 1_234, get_settings().bulk_envelope_size
    ids = mq.enqueue_many("indexing_tasks", [log(i, "envelopes") for i in range(n)], priority=4)
    assert len(ids) == len(set(ids)) == n
    assert mq.queue_stats("indexing_tasks")["pending"] == math.ceil(n / size)
    assert mq.get_status(ids[0])["state"] == "PENDING"
    # On the wire: JSON, the task name, and the items as one packed text.
    raw = [m for k in redis_client.scan_iter("indexing_tasks*") for m in redis_client.lrange(k, 0, -1)]
    message = json.loads(raw[0])
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == "indexing_tasks.bulk"
    body = json.loads(base64.b64decode(message["body"]))
    assert len(unpack_items(body[1]["packed_items"])) in {size, n % size}

    start_worker(["indexing_tasks", "dead_letter"], concurrency=2)
    wait_until(lambda: set(item_states(redis_client, ids)) == {"SUCCESS"}, timeout=120, what="every item")
    status = mq.get_status(ids[-1])
    assert status["state"] == "SUCCESS" and status["queue"] == "indexing_tasks"
    assert status["attempts"] == 1
    # One status record per envelope, not per message; the envelope's own result leaves the items out.
    envelopes = {i.rpartition(".")[0] for i in ids}
    assert len(envelopes) == math.ceil(n / size)
    assert len(list(redis_client.scan_iter("wft:envelope:*"))) == len(envelopes)
    assert list(redis_client.scan_iter("wft:item:*")) == []
    first = ids[0].rpartition(".")[0]
    meta = mq.app.backend.get_task_meta(first)
    assert meta["status"] == "SUCCESS" and meta["result"] == {"written": size, "dead_lettered": 0}
    assert meta["kwargs"] is None and meta["name"] == "indexing_tasks.bulk"
    search = SqliteSearchService(get_settings().data_dir / "search" / "search.db")
    hits = search.search_logs(query="payment processed", service="envelopes", limit=1000)
    assert len(hits) == 1000
    assert {h["id"] for h in search.search_logs(service="envelopes", limit=1000)} <= {
        f"envelopes-{i}" for i in range(n)
    }
    search.close()


def test_an_item_the_consumer_cannot_write_is_dead_lettered_alone(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # An envelope from an older producer that skipped validation: one item is malformed.
    items = [{"id": f"ok-{i}", "action": "index_log", "payload": log(i, "mixed")} for i in range(3)]
    items.append(
        {"id": "broken", "action": "index_log", "payload": {"action": "index_log", "entry": {"level": 1}}}
    )
    envelope = mq.app.send_task("indexing_tasks.bulk", kwargs={"items": items}, queue="indexing_tasks")
    start_worker(["indexing_tasks", "dead_letter"])
    wait_for_state(mq, envelope.id, {"SUCCESS"})
    assert item_states(redis_client, ["ok-0", "ok-1", "ok-2", "broken"]) == ["SUCCESS"] * 3 + [
        "DEAD_LETTERED"
    ]
    wait_until(lambda: mq.dead_letters.contains("broken"), what="the dead letter to be stored")
    dead = mq.dead_letters.get("broken")
    assert dead["task"] == "indexing_tasks.index_log" and dead["queue"] == "indexing_tasks"


@pytest.mark.slow
def test_fifty_thousand_documents_survive_a_killed_worker_exactly_once(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis, tmp_path: Path
) -> None:
    total = 50_000
    data_dir = tmp_path / "data"  # a search index of its own, so it can be counted exactly
    ids = mq.enqueue_many("indexing_tasks", [log(i, "fifty") for i in range(total)])
    worker = start_worker(["indexing_tasks", "dead_letter"], concurrency=2, env={"DATA_DIR": str(data_dir)},
                          loglevel="WARNING")  # fmt: skip
    search = SqliteSearchService(data_dir / "search" / "search.db")

    def indexed() -> int:
        return search.count("logs") if (data_dir / "search" / "search.db").exists() else 0

    wait_until(lambda: indexed() >= total // 5, timeout=300, interval=0.2, what="a fifth to be indexed")
    for child in worker.child_pids():
        os.kill(child, signal.SIGKILL)  # mid-batch: their envelopes are redelivered
    wait_until(lambda: indexed() == total and set(item_states(redis_client, ids)) == {"SUCCESS"},
               timeout=600, interval=1, what="all 50,000 documents")  # fmt: skip
    assert search.count("logs") == total
    assert item_states(redis_client, ids).count("SUCCESS") == total
    assert mq.list_dead_letters() == []
    search.close()


def test_an_envelope_dead_lettered_whole_shows_on_its_messages_and_replays_as_it_came(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "search").write_text("a file where the search directory should be")  # search is down
    ids = mq.enqueue_many("indexing_tasks", [log(i, "replayed") for i in range(20)])
    envelope = ids[0].rpartition(".")[0]
    start_worker(["indexing_tasks", "dead_letter"], env={"DATA_DIR": str(data_dir), "MAX_RETRIES": "0"})
    wait_until(lambda: mq.dead_letters.contains(envelope), timeout=60, what="the envelope's dead letter")
    status = mq.get_status(ids[7])
    assert status["state"] == "DEAD_LETTERED" and status["envelope"] == envelope
    assert status["dead_letter"]["id"] == envelope and "kwargs" not in status["dead_letter"]
    assert "search" in status["error"]["message"]

    (data_dir / "search").unlink()  # search is back
    replayed = mq.replay_dead_letter(envelope)
    new_ids = [item_id(replayed, i) for i in range(20)]
    wait_until(lambda: set(item_states(redis_client, new_ids)) == {"SUCCESS"}, timeout=60, what="the replay")
    search = SqliteSearchService(data_dir / "search" / "search.db")
    assert {h["id"] for h in search.search_logs(service="replayed", limit=100)} == {
        f"replayed-{i}" for i in range(20)
    }
    search.close()


def test_every_action_marked_bulk_has_a_bulk_writer() -> None:
    from fabric.contracts import known_actions
    from tasks.writers import WRITERS

    marked = {a.name for a in known_actions() if a.bulk}
    assert marked == set(WRITERS)
