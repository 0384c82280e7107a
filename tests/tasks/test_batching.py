"""Index and vector work arrives one message per document and is written in bulk, by real workers."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
import redis

from fabric.errors import BackendUnavailable, InvalidInput
from fabric.producer import MessageQueue
from services.analytics import get_workflow_stats
from services.search import get_search_service
from services.vectors import get_vector_service
from tasks.batching import BatchWriter, batch_stats, reset_batch_stats, set_process_slots
from tests.support.fleet import StartWorker
from tests.support.servers import wait_until

THREADS = ["-P", "threads"]


def _execution(i: int, run: str) -> dict[str, Any]:
    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
    return {
        "id": f"{run}-{i}",
        "workflow_id": f"wf-{run}",
        "status": "completed" if i % 3 else "failed",
        "started_at": started.isoformat(),
        "completed_at": (started + dt.timedelta(seconds=1)).isoformat(),
        "logs": [
            {"timestamp": started.isoformat(), "level": "info", "message": f"step {run} number{i} done",
             "execution_id": f"{run}-{i}", "id": f"{run}-{i}-log"},
        ],
    }  # fmt: skip


def test_n_index_messages_become_a_few_bulk_writes_and_all_are_searchable(
    mq: MessageQueue, start_worker: StartWorker
) -> None:
    reset_batch_stats()
    run = uuid.uuid4().hex[:8]
    n = 300
    for i in range(n):
        execution = _execution(i, run)
        mq.enqueue("indexing_tasks", {"action": "index_execution", "execution": execution})
        mq.enqueue("indexing_tasks", {"action": "index_log", "entry": execution["logs"][0]})
    for i in range(40):
        workflow = {"id": f"wf-{run}-{i}", "name": f"Invoice reminder {run} {i}", "tags": ["billing"]}
        mq.enqueue("indexing_tasks", {"action": "index_workflow", "workflow": workflow})
        mq.enqueue("vector_tasks", {"action": "embed_workflow", "workflow": workflow})
    # The queue is full before the worker starts; a batch closes when all 32 threads wait in a writer (or
    # after a second), so batches are large however slowly this machine hands out messages.
    start_worker(["indexing_tasks", "vector_tasks"], concurrency=32, extra_args=THREADS,
                 env={"BATCH_FLUSH_INTERVAL": "1"})  # fmt: skip

    search = get_search_service()
    wait_until(
        lambda: len(search.search_executions(workflow_id=f"wf-{run}", limit=1000)) == n,
        timeout=120, interval=0.5, what=f"{n} executions to be indexed",
    )  # fmt: skip
    wait_until(lambda: batch_stats().get("index_logs", {}).get("messages", 0) == n, timeout=60,
               what="every log message to be written")  # fmt: skip
    wait_until(lambda: batch_stats().get("embed_workflows", {}).get("messages", 0) == 40, timeout=60,
               what="every workflow to be embedded")  # fmt: skip
    for i in (0, 1, n - 1):
        hits = search.search_logs(query=f"number{i}", execution_id=f"{run}-{i}")
        assert [h["id"] for h in hits] == [f"{run}-{i}-log"]
    failed = search.search_executions(workflow_id=f"wf-{run}", status="failed", limit=1000)
    assert len(failed) == len([i for i in range(n) if i % 3 == 0])
    assert len(search.search_workflows(run, limit=100)) == 40
    similar = get_vector_service().search_similar("workflows", f"Invoice reminder {run} 7", limit=40,
                                                  score_threshold=0.0)  # fmt: skip
    assert {r["id"] for r in similar} >= {f"wf-{run}-{i}" for i in range(40)}

    stats = batch_stats()
    assert stats["index_executions"]["messages"] == n
    assert stats["index_executions"]["documents"] == n
    # 32 threads: a batch holds up to 32 messages; a few short batches at the start and the end are fine.
    assert stats["index_executions"]["flushes"] <= n // 8, stats
    assert stats["index_logs"]["flushes"] <= n // 8, stats
    assert stats["index_workflows"]["messages"] == 40
    assert stats["embed_workflows"]["flushes"] < 40, stats


def test_a_bad_document_fails_only_its_own_message(
    mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    reset_batch_stats()
    run = uuid.uuid4().hex[:8]
    ids = []
    for i in range(10):
        entry = {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "message": f"fine {run}",
                 "id": f"{run}-{i}"}  # fmt: skip
        if i == 4:
            entry["service"] = ""  # the producer's model lets it through; the search service refuses it
        ids.append(mq.enqueue("indexing_tasks", {"action": "index_log", "entry": entry}))
    start_worker(["indexing_tasks", "dead_letter"], concurrency=16, extra_args=THREADS)
    search = get_search_service()
    wait_until(lambda: len(search.search_logs(query=f"fine {run}")) == 9, timeout=60, what="9 logs indexed")
    wait_until(lambda: len(mq.list_dead_letters(queue="indexing_tasks")) == 1, timeout=60,
               what="the bad message to be dead-lettered")  # fmt: skip
    (letter,) = mq.list_dead_letters(queue="indexing_tasks")
    assert letter["id"] == ids[4]
    assert letter["reason"] == "permanent"
    assert "service" in letter["error"]["message"]
    assert f"{run}-4" not in {h["id"] for h in search.search_logs(query=f"fine {run}")}


def test_follow_ups_of_many_executions_share_bulk_writes_and_count_each_once(
    mq: MessageQueue, start_worker: StartWorker
) -> None:
    """``index_and_count_execution``, the one follow-up of an execution: counted, indexed with its logs, in
    writes shared by many messages; a message sent twice counts once; a refused log fails only its own
    message, after its execution was counted."""
    reset_batch_stats()
    run = uuid.uuid4().hex[:8]
    n = 120
    executions = [_execution(i, run) for i in range(n)]
    executions[17]["logs"][0]["service"] = ""  # the search service refuses it
    ids = [
        mq.enqueue("indexing_tasks", {"action": "index_and_count_execution", "execution": execution})
        for execution in executions + executions[:10]  # the first ten twice, as a redelivery would
    ]
    start_worker(["indexing_tasks", "dead_letter"], concurrency=32, extra_args=THREADS,
                 env={"BATCH_FLUSH_INTERVAL": "1"})  # fmt: skip
    search = get_search_service()
    wait_until(lambda: len(search.search_executions(workflow_id=f"wf-{run}", limit=1000)) == n,
               timeout=120, interval=0.5, what=f"{n} executions to be indexed")  # fmt: skip
    wait_until(lambda: len(mq.list_dead_letters(queue="indexing_tasks")) == 1, timeout=60,
               what="the refused message to be dead-lettered")  # fmt: skip
    (letter,) = mq.list_dead_letters(queue="indexing_tasks")
    assert letter["id"] == ids[17] and letter["reason"] == "permanent"
    stats = get_workflow_stats(f"wf-{run}")
    assert stats["runs"] == n  # each once, the refused one too, the ten sent twice once
    assert stats["by_status"]["failed"] == len([i for i in range(n) if i % 3 == 0])
    for i in (0, 9, n - 1):
        hits = search.search_logs(query=f"number{i}", execution_id=f"{run}-{i}")
        assert [h["id"] for h in hits] == [f"{run}-{i}-log"]
    assert search.search_logs(query="number17", execution_id=f"{run}-17") == []
    for message_id in ids[:17] + ids[18:]:
        wait_until(lambda m=message_id: mq.get_status(m)["state"] == "SUCCESS", timeout=30,
                   what=f"{message_id} to succeed")  # fmt: skip
    flushes = batch_stats()["execution_follow_ups"]
    assert flushes["messages"] >= n + 10  # the refused batch is written again, message by message
    assert flushes["flushes"] <= (n + 10) // 8, flushes


def test_a_crash_before_the_flush_loses_nothing(mq: MessageQueue, start_worker: StartWorker) -> None:
    # Short visibility timeout, so the killed worker's unacked messages come back within the test.
    short = {"TASK_TIME_LIMIT": "4", "TASK_SOFT_TIME_LIMIT": "3", "MAX_DELAY_SECONDS": "1",
             "RETRY_BACKOFF_MAX": "1", "VISIBILITY_MARGIN": "1", "UNACKED_RESTORE_INTERVAL": "1"}  # fmt: skip
    run = uuid.uuid4().hex[:8]
    # Fewer messages than threads and a long interval: the batch waits, unwritten, when the worker dies.
    slow = start_worker(["indexing_tasks"], concurrency=8, extra_args=THREADS,
                        env={**short, "BATCH_FLUSH_INTERVAL": "30"})  # fmt: skip
    ids = [
        mq.enqueue("indexing_tasks", {"action": "index_execution", "execution": _execution(i, run)})
        for i in range(3)
    ]
    wait_until(lambda: all(mq.get_status(i)["state"] == "STARTED" for i in ids), timeout=30,
               what="the three tasks to wait in one batch")  # fmt: skip
    search = get_search_service()
    assert search.search_executions(workflow_id=f"wf-{run}") == []
    slow.kill9()
    start_worker(["indexing_tasks"], concurrency=8, extra_args=THREADS, env=short)
    wait_until(lambda: len(search.search_executions(workflow_id=f"wf-{run}")) == 3, timeout=60,
               what="the three executions to be indexed after redelivery")  # fmt: skip
    for message_id in ids:
        wait_until(lambda m=message_id: mq.get_status(m)["state"] == "SUCCESS", timeout=30,
                   what=f"{message_id} to succeed")  # fmt: skip


def test_writer_groups_concurrent_submissions_and_hands_each_its_error(redis_client: redis.Redis) -> None:
    reset_batch_stats()
    calls: list[list[int]] = []
    failing = {"transient": False}

    def write(docs: list[int]) -> None:
        if failing["transient"]:
            raise BackendUnavailable("search is down")
        if 13 in docs:
            raise InvalidInput("13 is refused")
        calls.append(sorted(docs))

    writer: BatchWriter[int] = BatchWriter("unit", write, max_size=10, flush_interval=5)
    set_process_slots(10)
    try:
        errors: dict[int, BaseException] = {}

        def submit(value: int) -> None:
            try:
                writer.submit([value])
            except BaseException as exc:  # recorded for the assertions
                errors[value] = exc

        threads = [threading.Thread(target=submit, args=(v,)) for v in range(10, 20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # One bulk call was refused (13), then one write per message: only 13 failed.
        assert list(errors) == [13] and isinstance(errors[13], InvalidInput)
        assert sorted(v for c in calls for v in c) == [v for v in range(10, 20) if v != 13]

        failing["transient"] = True
        errors.clear()
        threads = [threading.Thread(target=submit, args=(v,)) for v in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(errors) == list(range(10))
        assert all(isinstance(e, BackendUnavailable) for e in errors.values())
    finally:
        set_process_slots(1)
    assert batch_stats()["unit"]["messages"] == 10


@pytest.mark.parametrize("slots", [1])
def test_one_slot_writes_at_once_without_waiting(redis_client: redis.Redis, slots: int) -> None:
    writes: list[list[str]] = []
    writer: BatchWriter[str] = BatchWriter("single", writes.append, max_size=100, flush_interval=60)
    set_process_slots(slots)
    # A prefork child runs one task at a time: waiting for company would only add the flush interval.
    assert writer.submit(["a"]) == 1
    assert writes == [["a"]]
