"""Structured JSON logs: the formatter, secret masking, and a real worker fleet whose lines let one
execution be followed across queues by its execution id."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from fabric.producer import MessageQueue
from services.logging import JsonFormatter, clear_task_context, execution_id_of, redact, set_task_context
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from workflows.pipelines import Pipelines
from workflows.samples import load_samples, sample_inputs


def make_record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("redis://:hunter2@db:6379/0 refused")
        except RuntimeError as error:
            exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("tasks.x", logging.WARNING, __file__, 1, message, args, exc_info)


def test_formatter_writes_one_json_object_with_the_task_context() -> None:
    token = set_task_context(task_id="t-1", task_name="q.a", execution_id="e-1", queue="q", other=None)
    try:
        line = JsonFormatter().format(make_record("hello %s", "world", exc=True))
    finally:
        clear_task_context(token)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "hello world"
    assert data["level"] == "WARNING"
    assert data["logger"] == "tasks.x"
    assert data["timestamp"].endswith("+00:00")
    assert (data["task_id"], data["task_name"], data["execution_id"], data["queue"]) == (
        "t-1",
        "q.a",
        "e-1",
        "q",
    )
    assert "other" not in data
    assert "RuntimeError" in data["exc_info"]
    assert "hunter2" not in data["exc_info"]
    outside = json.loads(JsonFormatter().format(make_record("no task")))
    assert "task_id" not in outside


def test_extra_fields_appear_as_fields_of_their_own_with_secrets_masked() -> None:
    logger = logging.getLogger("tests.extra")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = set_task_context(task_id="t-9", task_name="q.b", execution_id="e-9", queue="q")
    try:
        logger.warning(
            "stored %s",
            "wf-1",
            extra={
                "workflow_id": "wf-1",
                "attempt": 3,
                "elapsed": 0.25,
                "step": {"id": "fetch", "url": "https://bot:s3cr3t@hooks.example/x", "api_key": "k-1"},
                "tags": ["a", "b"],
                "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                "password": "hunter2",
                "tokens": 512,
                "task_id": "forged",  # the task context wins over an extra of the same name
                "level": "forged",  # nor can it replace a field of the line itself
            },
        )
        logger.info("plain line")
    finally:
        clear_task_context(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "stored wf-1"
    assert first["workflow_id"] == "wf-1"
    assert first["attempt"] == 3 and first["elapsed"] == 0.25
    assert first["tags"] == ["a", "b"]
    assert first["when"].startswith("2026-01-02T03:04:05")
    assert first["step"]["id"] == "fetch"
    assert "s3cr3t" not in json.dumps(first) and "k-1" not in json.dumps(first)
    assert first["password"] == "***"
    assert first["tokens"] == 512  # a count, not a secret
    assert (first["task_id"], first["execution_id"], first["queue"]) == ("t-9", "e-9", "q")
    assert first["level"] == "WARNING"
    assert {"timestamp", "logger", "process"} <= first.keys()
    assert "workflow_id" not in second and second["message"] == "plain line"
    # Celery's own extra repeats the message and adds the task's arguments (personal data, at times).
    received = make_record("Task q.a[t-1] received")
    received.name, received.data = "celery.worker.strategy", {"id": "t-1", "kwargs": "{'email': 'a@b.c'}"}
    assert "data" not in json.loads(JsonFormatter().format(received))


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("broker redis://:s3cret@host:6379/0 down", "s3cret"),
        ("amqp://user:pa55@rabbit//", "pa55"),
        ("headers {'Authorization': 'Bearer sk-live-123'}", "sk-live-123"),
        ("password=letmein&user=a", "letmein"),
        ('{"api_key": "k-999", "x": 1}', "k-999"),
        ("OPENAI_API_KEY=sk-abc", "sk-abc"),
        ("minio_secret_key: topsecret", "topsecret"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


def test_execution_id_is_found_in_every_payload_shape() -> None:
    assert execution_id_of({"payload": {"workflow_id": "w", "execution_id": "e1"}}) == "e1"
    assert execution_id_of({"payload": {"action": "index_execution", "execution": {"id": "e2"}}}) == "e2"
    assert execution_id_of({"payload": {"action": "index_log", "entry": {"execution_id": "e3"}}}) == "e3"
    assert execution_id_of({"result": {"id": "e4", "workflow_id": "w"}}) == "e4"
    assert execution_id_of({"record": {"kwargs": {"payload": {"execution_id": "e5"}}}}) == "e5"
    assert execution_id_of({"payload": {"action": "probe"}}) is None
    assert execution_id_of(None) is None


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            out.append(json.loads(raw))  # every log line must parse
    return out


def test_one_execution_is_followed_across_queues_in_json_logs(tmp_path: Path, mq: MessageQueue) -> None:
    env = {"LOG_JSON": "true"}
    groups = [["workflow_execution"], ["indexing_tasks", "vector_tasks", "analytics_tasks", "dead_letter"]]
    workers = [
        WorkerProcess(tmp_path / "w", g, concurrency=1, name=f"json{i}-{uuid.uuid4().hex[:4]}", env=env)
        for i, g in enumerate(groups)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready(mq.app, timeout=60)
        pipelines = Pipelines(queue=mq)
        workflow = load_samples()[0]
        pipelines.register_workflow(workflow)
        execution_id = pipelines.request_execution(workflow.id, sample_inputs(workflow.id)[0].input)

        def lines_of_execution() -> list[dict[str, Any]]:
            return [
                line
                for w in workers
                for line in json_lines(w.log_path)
                if line.get("execution_id") == execution_id
            ]

        def followed() -> bool:
            queues = {line.get("queue") for line in lines_of_execution()}
            # the execution, then its one follow-up (index_and_count_execution)
            return {"workflow_execution", "indexing_tasks"} <= queues

        wait_until(followed, timeout=60, what=f"log lines of {execution_id} from both queues")
        for line in lines_of_execution():
            assert {"timestamp", "level", "logger", "message", "task_id", "task_name", "queue"} <= line.keys()
        names = {line["task_name"] for line in lines_of_execution()}
        assert any(name.startswith("workflow_execution.") for name in names)
        assert any(name.startswith("indexing_tasks.") for name in names)
        # Celery's own lines (received, succeeded) are JSON too.
        assert any(line["logger"].startswith("celery") for w in workers for line in json_lines(w.log_path))
    finally:
        for worker in workers:
            worker.stop()
