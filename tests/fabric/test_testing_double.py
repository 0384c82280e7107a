"""The test double for code that enqueues (fabric/testing.py): what it records, and running what it recorded
through the real task bodies in this process, against the session's Redis and the embedded backends.

``message_queue_double`` is not imported here: the package's pytest11 entry point provides it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import redis
from celery import Celery

import tests.support.tasks  # noqa: F401 - registers the probe action and task
from config import Settings, get_settings
from config.queues import WORK_QUEUES, Queue
from fabric.contracts import Payload, register_action
from fabric.errors import BackendUnavailable, InvalidInput
from fabric.producer import MessageQueue, get_message_queue
from fabric.testing import InMemoryMessageQueue, installed
from services.analytics import get_workflow_stats
from services.search import get_search_service
from tasks.app import app
from tasks.base import BaseTask
from tests.fabric.conftest import runs
from tests.support.fleet import reset_process_clients
from tests.support.servers import free_port
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository
from workflows.samples import load_samples

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Relay(Payload):
    action: Literal["relay"]
    tag: str
    hops: int = 0


register_action(Queue.ANALYTICS, "relay", Relay, task="testing.relay")


@app.task(name="testing.relay", base=BaseTask, bind=True)
def relay(self: BaseTask, payload: dict[str, Any]) -> str:
    """A task that enqueues, as service code run by a worker does: another relay while ``hops`` remain,
    then a probe. Returns the id of what it enqueued."""
    message = Relay.model_validate(payload)
    then = (
        {"action": "relay", "tag": message.tag, "hops": message.hops - 1}
        if message.hops > 0
        else {"action": "probe", "tag": message.tag}
    )
    return get_message_queue().enqueue("analytics_tasks", then)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def workflow_doc(workflow_id: str, name: str) -> dict[str, object]:
    return {"id": workflow_id, "name": name, "tags": ["finance"]}


@pytest.fixture
def broker_depths(redis_client: redis.Redis) -> Iterator[dict[str, int]]:
    """The real queue's view of the session broker: what is waiting in each work queue (read after the test
    body, to show that running the double published nothing)."""
    real = MessageQueue()
    depths: dict[str, int] = {}
    yield depths
    depths.update({q.value: real.queue_stats(q.value)["pending"] for q in WORK_QUEUES})
    real.close()
    assert depths == dict.fromkeys(depths, 0), f"the run published to the broker: {depths}"


# --- recording ---------------------------------------------------------------------------------------------
def test_records_every_message_in_order_with_its_options(message_queue_double: InMemoryMessageQueue) -> None:
    mq = message_queue_double
    payload = {"workflow_id": "wf-1", "input_data": {"a": 1}, "priority": 7}
    execution = mq.enqueue("workflow_execution", payload)
    indexing = mq.enqueue(
        "indexing_tasks",
        {"action": "index_workflow", "workflow": workflow_doc("wf-1", "Invoices")},
        priority=2, delay_seconds=30, ttl_seconds=90.5,
    )  # fmt: skip
    group_ids = mq.enqueue_group(
        [
            ("vector_tasks", {"action": "embed_workflow", "workflow": workflow_doc("wf-1", "Invoices")}),
            ("workflow_execution", {"workflow_id": "wf-2", "execution_id": "run-2"}),
        ]
    )

    sent = mq.sent
    assert [m.id for m in sent] == [execution, indexing, *group_ids]
    assert [(m.queue, m.task) for m in sent] == [
        ("workflow_execution", "workflow_execution.execute"),
        ("indexing_tasks", "indexing_tasks.index_workflow"),
        ("vector_tasks", "vector_tasks.embed_workflow"),
        ("workflow_execution", "workflow_execution.execute"),
    ]
    first, second, third, fourth = sent
    # The payload after validation, as JSON: defaults filled in, the execution id injected (= message id).
    assert first.payload == {
        "action": "execute", "workflow_id": "wf-1", "input_data": {"a": 1}, "priority": 7,
        "execution_id": execution,
    }  # fmt: skip
    assert first.priority == 7  # the payload's own priority, as the real enqueue takes it
    assert (first.delay_seconds, first.ttl_seconds) == (0, None)
    assert (second.priority, second.delay_seconds, second.ttl_seconds) == (2, 30, 90.5)
    assert second.payload["workflow"] == {
        "id": "wf-1", "name": "Invoices", "description": "", "tags": ["finance"], "category": "general",
    }  # fmt: skip
    assert re.fullmatch(UUID, execution) and re.fullmatch(UUID, indexing)
    # A group: one marker for the call; an execution named by its payload keeps that id as its message id.
    assert third.group == fourth.group is not None and first.group is None
    assert fourth.payload["execution_id"] == "run-2" and re.fullmatch(UUID, fourth.id)
    assert mq.sent_to("workflow_execution") == [first, fourth]
    # What was sent, not the caller's object: changing that afterwards changes no record.
    payload["input_data"]["a"] = 2
    assert mq.sent[0].payload["input_data"] == {"a": 1}


def test_a_given_message_id_is_kept(message_queue_double: InMemoryMessageQueue) -> None:
    message_id = message_queue_double.enqueue(
        "workflow_execution", {"workflow_id": "wf-1"}, message_id="my-execution-1"
    )
    assert message_id == "my-execution-1"
    [sent] = message_queue_double.sent
    assert sent.payload["execution_id"] == "my-execution-1"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda mq: mq.enqueue("nope", {}), "unknown queue 'nope'"),
        (lambda mq: mq.enqueue("workflow_execution", {"workflow_id": "x", "extra": 1}), "payload.extra"),
        (lambda mq: mq.enqueue("workflow_execution", {"workflow_id": "x"}, priority=10), "priority must be"),
        (
            lambda mq: mq.enqueue("workflow_execution", {"workflow_id": "x"}, delay_seconds=5, ttl_seconds=5),
            "must be longer than delay_seconds",
        ),
        (
            lambda mq: mq.enqueue_many("indexing_tasks", [{"action": "index_log"}]),
            "payloads[0]: invalid payload for indexing_tasks/index_log",
        ),
        (lambda mq: mq.enqueue_group([("vector_tasks", {"action": "nope"})]), "message 0: unknown action"),
    ],
)
def test_refuses_what_the_real_queue_refuses_and_records_nothing(
    message_queue_double: InMemoryMessageQueue, call, message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        call(message_queue_double)
    assert message in str(refused.value)
    assert message_queue_double.sent == []
    assert message_queue_double.queue_stats("indexing_tasks")["pending"] == 0


def test_enqueue_many_packs_bulk_queues_into_envelopes_with_envelope_ids() -> None:
    mq = InMemoryMessageQueue(settings=Settings(bulk_envelope_size=2))
    entries = [
        {
            "action": "index_log",
            "entry": {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "message": f"m{i}"},
        }
        for i in range(5)
    ]
    ids = mq.enqueue_many("indexing_tasks", entries, priority=3)

    envelopes = [m.envelope for m in mq.sent]
    assert len(set(envelopes)) == 3 and all(e is not None and re.fullmatch(UUID, e) for e in envelopes)
    assert ids == [f"{e}.{i}" for e, i in zip(envelopes, [0, 1, 0, 1, 0], strict=True)]
    assert [m.id for m in mq.sent] == ids
    assert all(m.task == "indexing_tasks.index_log" and m.priority == 3 for m in mq.sent)
    assert mq.sent[4].payload["entry"]["level"] == "INFO"  # after validation
    # Three broker messages wait (the real queue's "pending" counts broker messages: an envelope is one).
    assert mq.queue_stats("indexing_tasks") == {"queue": "indexing_tasks", "pending": 3, "dead_lettered": 0}

    # Executions are never enveloped: one message (and id) each.
    executions = mq.enqueue_many("workflow_execution", [{"workflow_id": "a"}, {"workflow_id": "b"}])
    assert all(re.fullmatch(UUID, i) for i in executions)
    assert [m.envelope for m in mq.sent[5:]] == [None, None]
    assert mq.queue_stats("workflow_execution")["pending"] == 2


def test_reads_before_anything_ran_need_no_server() -> None:
    # Nothing answers at these URLs: recording and reading the double must not try them.
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    mq = InMemoryMessageQueue(settings=Settings(redis_url=nowhere, broker_url=nowhere))
    message_id = mq.enqueue("analytics_tasks", {"action": "probe", "tag": "t"})
    assert mq.get_status(message_id) == {
        "id": message_id, "state": "PENDING", "result": None, "error": None, "attempts": 0, "task": None,
        "queue": None, "date_done": None, "dead_letter": None,
    }  # fmt: skip
    assert mq.queue_stats("analytics_tasks") == {"queue": "analytics_tasks", "pending": 1, "dead_lettered": 0}
    assert mq.list_dead_letters() == []
    assert mq.health_check()["status"] == "healthy"
    with pytest.raises(InvalidInput, match="unknown queue"):
        mq.queue_stats("nope")
    with pytest.raises(InvalidInput, match="unknown queue"):
        mq.list_dead_letters(queue="nope")
    with pytest.raises(AttributeError, match="no Celery app"):
        mq.app  # noqa: B018


def test_pending_status_has_the_real_queues_shape(mq: MessageQueue) -> None:
    double = InMemoryMessageQueue()
    queued = double.enqueue("workflow_execution", {"workflow_id": "wf-1"})
    assert double.get_status(queued) == mq.get_status(queued)  # unknown to the real one: PENDING too


def test_the_fixture_installs_the_double_for_the_services_of_the_test(
    message_queue_double: InMemoryMessageQueue,
) -> None:
    assert get_message_queue() is message_queue_double
    assert Pipelines().queue is message_queue_double


def test_installed_puts_the_real_queue_back_after_the_block() -> None:
    double = InMemoryMessageQueue()
    with installed(double) as installed_queue:
        assert get_message_queue() is double is installed_queue
    after = get_message_queue()
    assert after is not double and type(after) is MessageQueue


# --- running what was recorded ------------------------------------------------------------------------------
def test_an_index_workflow_message_runs_and_the_search_service_finds_the_workflow(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    workflow_id, name = unique("wf"), f"Quarterly reconciliation {uuid.uuid4().hex[:6]}"
    message_id = mq.enqueue(
        "indexing_tasks", {"action": "index_workflow", "workflow": workflow_doc(workflow_id, name)}
    )
    assert get_search_service().search_workflows(name) == []

    [delivery] = mq.run(app)  # the worker app, named (the other tests take Celery's current app: the same)

    assert (delivery.id, delivery.task, delivery.queue) == (
        message_id,
        "indexing_tasks.index_workflow",
        "indexing_tasks",
    )
    assert delivery.state == "SUCCESS", delivery.error
    assert delivery.result == {"indexed": "workflows", "id": workflow_id}
    assert delivery.kwargs["payload"]["workflow"]["id"] == workflow_id  # decoded from the message's JSON
    assert [hit["id"] for hit in get_search_service().search_workflows(name)] == [workflow_id]
    status = mq.get_status(message_id)  # what the real get_status reads from the result backend
    assert (status["state"], status["attempts"], status["result"]) == ("SUCCESS", 1, delivery.result)
    assert mq.run() == []  # nothing is run twice
    mq.close()


def test_an_execution_of_a_registered_sample_runs_with_its_pipeline_and_its_record_is_stored(
    message_queue_double: InMemoryMessageQueue, redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = message_queue_double
    sample = next(w for w in load_samples() if w.id == "customer-onboarding")
    workflow = sample.model_copy(update={"id": unique("onboarding")})
    pipelines = Pipelines()  # takes get_message_queue(): the double
    registered = pipelines.register_workflow(workflow)
    assert {d.task: d.state for d in mq.run()} == {
        "indexing_tasks.index_workflow": "SUCCESS", "vector_tasks.embed_workflow": "SUCCESS",
    }  # fmt: skip
    assert [d.id for d in mq.deliveries] == registered["messages"]

    execution_id = pipelines.request_execution(workflow.id, {"name": "Ada", "email": "ada@example.com"})
    [sent] = mq.sent[2:]
    assert (sent.task, sent.payload["workflow_id"], sent.id) == (
        "workflow_execution.execute",
        workflow.id,
        execution_id,
    )
    execution, *follow_ups = mq.run()

    assert (execution.id, execution.state) == (execution_id, "SUCCESS"), execution.error
    assert execution.result["status"] == "completed" and execution.result["execution_id"] == execution_id
    # The follow-up the worker attaches to every execution ran too, on the execution's record.
    assert [(d.task, d.state, d.parent_id) for d in follow_ups] == [
        ("indexing_tasks.index_and_count_execution", "SUCCESS", execution_id),
    ]
    assert all(d.args == [execution.result] for d in follow_ups)
    record = WorkflowRepository().get_execution(execution_id)
    assert record is not None and record.status.value == "completed"
    assert [e["id"] for e in get_search_service().search_executions(workflow_id=workflow.id)] == [
        execution_id
    ]
    assert get_workflow_stats(workflow.id)["runs"] == 1
    status = mq.get_status(execution_id)
    assert (status["state"], status["result"]["execution_id"]) == ("SUCCESS", execution_id)


def test_a_permanent_failure_is_dead_lettered_and_a_replay_is_recorded(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    message_id = mq.enqueue("workflow_execution", {"workflow_id": unique("never-registered")})

    failed, stored = mq.run()

    assert (failed.id, failed.state, failed.error and failed.error["type"]) == (
        message_id,
        "FAILURE",
        "NotFound",
    )
    assert (stored.task, stored.queue, stored.parent_id, stored.state) == (
        "dead_letter.store", "dead_letter", message_id, "SUCCESS",
    )  # fmt: skip
    status = mq.get_status(message_id)
    assert status["state"] == "DEAD_LETTERED" and status["dead_letter"]["reason"] == "permanent"
    assert [r["id"] for r in mq.list_dead_letters()] == [message_id]
    assert mq.queue_stats("workflow_execution")["dead_lettered"] == 1

    replayed = mq.replay_dead_letter(message_id)
    again = mq.sent[-1]
    assert (again.id, again.task, again.queue) == (
        replayed,
        "workflow_execution.execute",
        "workflow_execution",
    )
    assert again.payload["execution_id"] == message_id  # the execution keeps its id through a replay
    assert mq.list_dead_letters() == []

    # The replay fails the same way (the workflow is still not registered); this time it is purged.
    replay_failed, replay_stored = mq.run()
    assert (replay_failed.id, replay_failed.state, replay_stored.task) == (
        replayed,
        "FAILURE",
        "dead_letter.store",
    )
    assert [r["id"] for r in mq.list_dead_letters()] == [replayed]
    mq.purge_dead_letter(replayed)
    assert mq.list_dead_letters() == [] and mq.queue_stats("workflow_execution")["dead_lettered"] == 0
    mq.close()


def test_a_transient_error_is_retried_then_dead_lettered_as_on_a_worker(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    tag = unique("retry")
    message_id = mq.enqueue("analytics_tasks", {"action": "probe", "tag": tag, "fail": "transient"})

    deliveries = mq.run()

    max_retries = get_settings().max_retries
    *retries, last, stored = deliveries
    assert [(d.id, d.state, d.retries) for d in retries] == [
        (message_id, "RETRY", n) for n in range(max_retries)
    ]
    assert all(
        d.error == {"type": "TransientError", "message": f"probe {tag} fails transiently by design"}
        for d in retries
    )
    assert (last.state, last.retries, stored.task) == ("FAILURE", max_retries, "dead_letter.store")
    assert len(runs(redis_client, tag)) == max_retries + 1  # the body really ran each time
    status = mq.get_status(message_id)
    assert status["attempts"] == max_retries + 1  # BaseTask counted each delivery
    assert status["dead_letter"]["reason"] == "retries_exhausted"
    mq.close()


def test_an_envelope_runs_through_the_bulk_consumer_and_each_message_has_its_status(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    marker = uuid.uuid4().hex[:10]
    entries = [
        {"action": "index_log", "entry": {"id": f"{marker}-{i}", "timestamp": "2026-01-01T00:00:00Z",
                                          "level": "info", "message": f"reconciled batch {marker}"}}
        for i in range(3)
    ]  # fmt: skip
    ids = mq.enqueue_many("indexing_tasks", entries)

    [envelope] = mq.run()

    assert (envelope.task, envelope.state, envelope.result) == (
        "indexing_tasks.bulk", "SUCCESS", {"written": 3, "dead_lettered": 0},
    )  # fmt: skip
    assert [f"{envelope.id}.{i}" for i in range(3)] == ids
    assert [mq.get_status(i)["state"] for i in ids] == ["SUCCESS"] * 3
    assert len(get_search_service().search_logs(query=marker)) == 3
    mq.close()


def test_a_message_whose_ttl_passed_expires_unrun(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    tag = unique("expired")
    message_id = mq.enqueue("vector_tasks", {"action": "probe", "tag": tag}, ttl_seconds=1)
    time.sleep(1.2)  # the ttl counts from the enqueue, as on a broker

    [delivery] = mq.run()

    assert (delivery.id, delivery.state) == (message_id, "EXPIRED")
    assert runs(redis_client, tag) == []
    assert mq.get_status(message_id)["state"] == "EXPIRED"
    mq.close()


def test_messages_run_in_the_order_they_were_sent(
    redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = InMemoryMessageQueue()
    tags = [unique("order") for _ in range(3)]
    ids = [
        mq.enqueue("analytics_tasks", {"action": "probe", "tag": tags[0]}, priority=0),
        mq.enqueue("vector_tasks", {"action": "probe", "tag": tags[1], "value": {"n": 1}}, priority=9),
        mq.enqueue("analytics_tasks", {"action": "probe", "tag": tags[2]}, delay_seconds=60),
    ]

    deliveries = mq.run()

    assert [d.id for d in deliveries] == ids  # priorities and delays do not reorder an in-process run
    assert [d.result for d in deliveries] == [
        {"tag": t, "value": v} for t, v in zip(tags, [None, {"n": 1}, None], strict=True)
    ]
    assert [runs(redis_client, t)[0]["queue"] for t in tags] == [
        "analytics_tasks",
        "vector_tasks",
        "analytics_tasks",
    ]
    mq.close()


def test_run_says_when_the_app_is_not_the_workers() -> None:
    mq = InMemoryMessageQueue()
    mq.enqueue("analytics_tasks", {"action": "probe", "tag": "t"})
    with pytest.raises(RuntimeError, match=r"'not-the-workers' is not the workers' .*; pass the worker app"):
        mq.run(Celery("not-the-workers", set_as_current=False))
    assert mq.queue_stats("analytics_tasks")["pending"] == 1  # kept for a later run


def test_run_says_when_redis_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    mq = InMemoryMessageQueue()
    mq.enqueue("analytics_tasks", {"action": "probe", "tag": "t"})
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_process_clients()
    with pytest.raises(BackendUnavailable, match=r"InMemoryMessageQueue\.run needs Redis"):
        mq.run()
    assert len(mq.sent) == 1 and mq.queue_stats("analytics_tasks")["pending"] == 1  # kept for a later run


def test_what_a_task_enqueues_through_the_installed_double_is_recorded_and_run_too(
    message_queue_double: InMemoryMessageQueue, redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    mq = message_queue_double
    tag = unique("relay")
    first = mq.enqueue("analytics_tasks", {"action": "relay", "tag": tag, "hops": 1})

    deliveries = mq.run()

    assert [(d.task, d.state) for d in deliveries] == [
        ("testing.relay", "SUCCESS"), ("testing.relay", "SUCCESS"), ("testing.probe", "SUCCESS"),
    ]  # fmt: skip
    assert [m.id for m in mq.sent] == [first, deliveries[0].result, deliveries[1].result]
    assert [m.payload for m in mq.sent[1:]] == [
        {"action": "relay", "tag": tag, "hops": 0}, {"action": "probe", "tag": tag, "sleep": 0.0},
    ]  # fmt: skip
    assert [r["id"] for r in runs(redis_client, tag)] == [deliveries[2].id]


def test_a_run_that_never_ends_is_stopped(
    message_queue_double: InMemoryMessageQueue, redis_client: redis.Redis, broker_depths: dict[str, int]
) -> None:
    message_queue_double.enqueue("analytics_tasks", {"action": "relay", "tag": unique("loop"), "hops": 50})
    with pytest.raises(RuntimeError, match="more than 5 messages ran in one run"):
        message_queue_double.run(max_messages=5)
    assert len(message_queue_double.deliveries) == 5


def test_clear_forgets_what_was_recorded() -> None:
    mq = InMemoryMessageQueue()
    mq.enqueue("analytics_tasks", {"action": "probe", "tag": "t"})
    mq.clear()
    assert mq.sent == [] and mq.queue_stats("analytics_tasks")["pending"] == 0
    assert mq.run() == []
