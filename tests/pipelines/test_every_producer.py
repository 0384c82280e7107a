"""Every producer gets the whole pipeline: an execution is recorded, indexed (execution and logs) and counted
exactly once however it was enqueued, including by a codebase that has none of the project's modules.

The pipeline is attached by the worker that runs the execution (tasks/execution.py); these tests send
executions every way there is and count, from the fleet's own task counters, how often each follow-up ran.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import chain, group

from config import get_settings
from fabric.producer import MessageQueue
from services.analytics import get_workflow_stats
from services.metrics import OUTCOMES_KEY
from services.search import get_search_service, reset_search_service
from services.vectors import reset_vector_service
from tasks.execution import EARLIER_FOLLOW_UPS, EXECUTION_FOLLOW_UP
from tests.fabric.conftest import wait_for_state
from tests.support.fleet import StartWorker
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository

#: A service of another team: Celery and a task name, nothing of ours. Prints the message ids it sent.
PLAIN_CELERY_PRODUCER = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    broker, payloads = sys.argv[1], json.loads(sys.argv[2])
    app = Celery("another-service", broker=broker)
    ids = [
        app.send_task("workflow_execution.execute", kwargs={"payload": p}, queue="workflow_execution").id
        for p in payloads
    ]
    ours = {"config", "tasks", "services", "workflows", "api", "cli", "celeryconfig", "tests"}
    imported = sorted(name for name in sys.modules if name.split(".")[0] in ours)
    assert not imported, f"the plain producer imported the project's modules: {imported}"
    print(json.dumps(ids))
    """
)

FLOW = {
    "name": "Greeting",
    "description": "Says hello to a person",
    "definition": {
        "nodes": [
            {"id": "in", "type": "input", "data": {}},
            {
                "id": "hello",
                "type": "process",
                "data": {
                    "operation": "template",
                    "field": "name",
                    "target": "greeting",
                    "params": {"template": "Hello, {value}!"},
                },
            },
            {"id": "out", "type": "output", "data": {}},
        ],
        "edges": [{"source": "in", "target": "hello"}, {"source": "hello", "target": "out"}],
    },
}


def send_from_plain_celery(tmp_path: Path, payloads: list[dict[str, object]]) -> list[str]:
    """Send executions from a fresh interpreter that imports only Celery."""
    broker = get_settings().effective_broker_url
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_CELERY_PRODUCER, broker, json.dumps(payloads)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


#: The follow-up the worker attaches, and those an older producer chained itself.
FOLLOW_UP_TASKS = (EXECUTION_FOLLOW_UP, *EARLIER_FOLLOW_UPS)


def follow_up_runs(client: redis.Redis) -> dict[str, int]:
    """How many times each follow-up task has succeeded in the fleet (its task counters)."""
    counts = client.hgetall(OUTCOMES_KEY)
    return {name: int(counts.get(f"{name}|success".encode(), 0)) for name in FOLLOW_UP_TASKS}


NODE_PRODUCER = Path(__file__).resolve().parents[1] / "support" / "celery_node"


@pytest.fixture(scope="session")
def celery_node(session_root: Path) -> Path:
    """A JavaScript producer with celery-node installed from its lock file, in the session's directory."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(
            "node and npm are needed: run `scripts/bootstrap.sh dev` (it installs them with apt)"
        )
    target = session_root / "celery-node"
    shutil.copytree(NODE_PRODUCER, target)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    return target


def send_from_celery_node(producer: Path, payloads: list[dict[str, object]]) -> list[str]:
    """Send executions from JavaScript with celery-node; it returns once their results are in."""
    settings = get_settings()
    done = subprocess.run(
        ["node", "producer.js", settings.effective_broker_url, settings.effective_result_backend,
         json.dumps(payloads)],
        cwd=producer, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.fixture
def pipelines(mq: MessageQueue) -> Pipelines:
    reset_search_service()
    reset_vector_service()
    return Pipelines(queue=mq)


def register(pipelines: Pipelines) -> str:
    workflow_id = f"greeting-{uuid.uuid4().hex[:8]}"
    pipelines.register_workflow({"id": workflow_id, **FLOW})
    return workflow_id


def assert_whole_pipeline_once(
    workflow_id: str, execution_ids: list[str], client: redis.Redis, composed: int = 0
) -> None:
    """Each execution recorded, indexed with its logs and counted; one follow-up ran once per execution
    (the ``composed`` executions sent by an older producer ran that producer's follow-ups instead)."""
    search = get_search_service()
    repo = WorkflowRepository()
    total = len(execution_ids)
    expected = {EXECUTION_FOLLOW_UP: total - composed, **dict.fromkeys(EARLIER_FOLLOW_UPS, composed)}

    def indexed() -> bool:
        found = {e["id"] for e in search.search_executions(workflow_id=workflow_id, limit=100)}
        return found == set(execution_ids)

    wait_until(indexed, timeout=90, interval=0.3, what=f"{total} executions of {workflow_id} to be indexed")
    wait_until(lambda: get_workflow_stats(workflow_id)["runs"] == total, timeout=60, what="the statistics")
    wait_until(lambda: follow_up_runs(client) == expected, timeout=60, what="the follow-ups")
    for execution_id in execution_ids:
        record = repo.get_execution(execution_id)
        assert record is not None and record.status.value == "completed", (execution_id, record)
        assert search.search_logs(execution_id=execution_id, limit=100), f"no logs indexed for {execution_id}"
    stats = get_workflow_stats(workflow_id)
    assert stats["runs"] == total
    assert stats["by_status"]["completed"] == total
    time.sleep(2)  # a second copy of a follow-up would have run by now
    # One follow-up ran exactly once per execution, whoever sent it.
    assert follow_up_runs(client) == expected


def test_every_producer_gets_the_whole_pipeline_exactly_once(
    pipelines: Pipelines, mq: MessageQueue, fleet: list[WorkerProcess], redis_client: redis.Redis,
    tmp_path: Path, celery_node: Path,
) -> None:  # fmt: skip
    workflow_id = register(pipelines)
    payload = {"workflow_id": workflow_id, "input_data": {"name": "Ada"}}
    sent = [
        mq.enqueue("workflow_execution", payload),  # the guide's enqueue (and the HTTP API's)
        pipelines.request_execution(workflow_id, {"name": "Grace"}),  # Pipelines
        *mq.enqueue_many("workflow_execution", [payload, payload]),  # high volume
        *send_from_plain_celery(tmp_path, [payload, payload]),  # another codebase, by task name only
        *send_from_celery_node(celery_node, [payload]),  # another language
    ]
    # An older producer that composed the pipeline itself, with the follow-ups of its time: the worker
    # adds no follow-up of its own.
    composed = str(uuid.uuid4())
    chain(
        mq.app.signature(
            "workflow_execution.execute", kwargs={"payload": {**payload, "execution_id": composed}},
            task_id=composed, queue="workflow_execution",
        ),
        group(mq.app.signature(name) for name in EARLIER_FOLLOW_UPS),
    ).apply_async()  # fmt: skip
    sent.append(composed)
    assert_whole_pipeline_once(workflow_id, sent, redis_client, composed=1)


def test_a_dead_lettered_execution_from_a_plain_celery_app_replays_through_the_whole_pipeline(
    pipelines: Pipelines, mq: MessageQueue, fleet: list[WorkerProcess], redis_client: redis.Redis,
    tmp_path: Path,
) -> None:  # fmt: skip
    workflow_id = f"later-{uuid.uuid4().hex[:8]}"
    (message_id,) = send_from_plain_celery(
        tmp_path, [{"workflow_id": workflow_id, "input_data": {"name": "Ada"}}]
    )
    status = wait_for_state(mq, message_id, {"DEAD_LETTERED"}, timeout=60)
    assert status["dead_letter"]["reason"] == "permanent"
    assert workflow_id in status["error"]["message"]
    assert follow_up_runs(redis_client) == dict.fromkeys(FOLLOW_UP_TASKS, 0)

    pipelines.register_workflow({"id": workflow_id, **FLOW})  # the cause is fixed: replay
    mq.replay_dead_letter(message_id)
    # The execution keeps the id of its first message through the replay.
    assert_whole_pipeline_once(workflow_id, [message_id], redis_client)
    assert mq.list_dead_letters() == []


def test_follow_ups_carry_the_whole_record_and_show_a_summary(
    pipelines: Pipelines, mq: MessageQueue, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # Only an execution worker: the follow-ups it sends stay on their queues, to be read as they were sent.
    workflow_id = register(pipelines)
    start_worker(["workflow_execution"])
    execution_id = pipelines.request_execution(workflow_id, {"name": "Ada"})
    wait_for_state(mq, execution_id, {"SUCCESS"}, timeout=60)
    follow_ups = [
        json.loads(raw)
        for key in redis_client.scan_iter("*_tasks*")
        for raw in redis_client.lrange(key, 0, -1)
        if json.loads(raw)["headers"]["task"] in FOLLOW_UP_TASKS
    ]
    # One follow-up message per execution.
    assert [m["headers"]["task"] for m in follow_ups] == [EXECUTION_FOLLOW_UP]
    for message in follow_ups:
        # Flower's "args" for the follow-up: which execution, not a repr of the whole record ...
        assert message["headers"]["argsrepr"] == f"(<execution {execution_id} of {workflow_id}: completed>,)"
        assert message["headers"]["kwargsrepr"] == "{}"
        # ... while the task gets the whole record.
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args[0]["execution_id"] == execution_id and args[0]["status"] == "completed"
        assert args[0]["steps"] and kwargs == {}
