"""A client generated from the running API's ``/openapi.json`` by a real generator (openapi-python-client),
imported and driven against real workers: register -> execute -> status -> search, and the documented
errors parsed as ``ErrorBody``. The client is told to raise on any status the document does not declare, so
an answer the document forgets fails the test. The generated code lives in a temporary directory only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from http import HTTPStatus
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import pytest

from fabric.producer import MessageQueue
from tests.api.conftest import READ_KEY, WRITE_KEY, ApiServer
from tests.support.fleet import reset_process_clients
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from workflows.samples import load_samples, sample_inputs

PACKAGE = "wft_client"
T = TypeVar("T")


@pytest.fixture(scope="module")
def generated(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package generated from the served document, importable for this module's tests."""
    workdir = tmp_path_factory.mktemp("generated-client")
    document = httpx.get(f"{api_server.url}/openapi.json", timeout=10)  # public, like the docs pages
    assert document.status_code == 200
    (workdir / "openapi.json").write_bytes(document.content)
    (workdir / "config.json").write_text(json.dumps({"package_name_override": PACKAGE}))
    bin_dir = Path(sys.executable).parent
    # The generator formats its output with ruff, which it finds on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    result = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json",
            "--config", "config.json", "--meta", "none", "--output-path", PACKAGE,
        ],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # Any warning means part of the document could not be turned into code.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(workdir))
    try:
        yield import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture
def connect(generated: ModuleType, api_server: ApiServer) -> Iterator[Callable[..., Any]]:
    """``connect(kind, **options)``: a generated ``Client`` or ``AuthenticatedClient`` of the running API that
    raises on any status the document does not declare; closed after the test."""
    opened: list[Any] = []

    def connect(kind: str, **options: Any) -> Any:
        client = getattr(generated, kind)(base_url=api_server.url, raise_on_unexpected_status=True, **options)
        opened.append(client.__enter__())
        return client

    yield connect
    for client in opened:
        client.__exit__(None, None, None)


def operation(tag: str, name: str) -> Any:
    """The generated module of operation ``name`` (its ``sync``, ``sync_detailed`` ...)."""
    return import_module(f"{PACKAGE}.api.{tag}.{name}")


def poll(call: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 60) -> T:
    seen: list[T] = []

    def check() -> bool:
        seen[:] = [call()]
        return done(seen[0])

    wait_until(check, timeout=timeout, interval=0.2, what=what)
    return seen[0]


@pytest.fixture
def own_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A DATA_DIR of this test's own (the API in this process and the workers started after it): the store,
    index and vectors it fills are neither seen by other tests nor holding theirs."""
    saved = os.environ["DATA_DIR"]
    os.environ["DATA_DIR"] = str(tmp_path / "data")
    reset_process_clients()
    try:
        yield tmp_path / "data"
    finally:
        os.environ["DATA_DIR"] = saved
        reset_process_clients()


def test_a_generated_client_registers_executes_and_finds_a_workflow(
    own_data_dir: Path, connect: Callable[..., Any], mq: MessageQueue, fleet: list[WorkerProcess]
) -> None:
    models = import_module(f"{PACKAGE}.models")
    client = connect("AuthenticatedClient", token=WRITE_KEY)  # Authorization: Bearer <key>
    target = load_samples()[0]
    sample = next(s for s in sample_inputs(target.id) if s.expect == "completed")

    # register
    body = models.RegisterWorkflowWorkflow.from_dict(target.model_dump(mode="json"))
    created = operation("workflows", "register_workflow").sync_detailed(client=client, body=body)
    assert created.status_code == HTTPStatus.CREATED
    assert isinstance(created.parsed, models.WorkflowRegistered)
    assert created.parsed.workflow_id == target.id
    assert len(created.parsed.messages) == 2
    stored = operation("workflows", "get_workflow").sync(workflow_id=target.id, client=client)
    assert isinstance(stored, models.WorkflowDocument)
    assert (stored.name, [n.id for n in stored.definition.nodes]) == (
        target.name,
        [n.id for n in target.definition.nodes],
    )

    # execute
    request = models.ExecutionRequest(
        input_data=models.ExecutionRequestInputData.from_dict(sample.input), priority=5
    )
    queued = operation("workflows", "request_execution").sync(
        workflow_id=target.id, client=client, body=request
    )
    assert isinstance(queued, models.ExecutionQueued)
    assert queued.workflow_id == target.id
    assert queued.status == "queued"

    # status: a queued execution first (or already recorded), then the record
    get_execution = operation("executions", "get_execution")
    first = get_execution.sync(execution_id=queued.execution_id, client=client)
    assert isinstance(first, models.QueuedExecution | models.RecordedExecution)
    record = poll(
        lambda: get_execution.sync(execution_id=queued.execution_id, client=client),
        lambda r: isinstance(r, models.RecordedExecution) and r.status == models.ExecutionStatus.COMPLETED,
        what="the execution to complete",
    )
    assert record.workflow_id == target.id
    assert record.result == record.output_data
    assert record.steps
    assert all(
        step.status in (models.StepStatus.COMPLETED, models.StepStatus.SKIPPED) for step in record.steps
    )
    assert record.duration_ms is not None
    assert record.duration_ms >= 0
    message_status = operation("queues", "message_status")
    indexed = poll(
        lambda: message_status.sync(message_id=created.parsed.messages[0], client=client),
        lambda s: s.state == "SUCCESS",
        what="the workflow to be indexed",
    )
    assert isinstance(indexed, models.MessageStatus)

    # search: by text, then the execution by workflow and status
    found = poll(
        lambda: operation("search", "search_workflows").sync(client=client, q=target.name),
        lambda r: any(hit.id == target.id for hit in r.results),
        what="the workflow to be found",
    )
    assert isinstance(found, models.WorkflowSearchResults)
    hit = next(h for h in found.results if h.id == target.id)
    assert isinstance(hit, models.WorkflowHit)
    assert hit.name == target.name
    executions = poll(
        lambda: operation("search", "search_executions").sync(
            client=client, workflow_id=target.id, status="completed"
        ),
        lambda r: [h.id for h in r.results] == [queued.execution_id],
        what="the execution to be found",
    )
    assert isinstance(executions.results[0], models.ExecutionHit)
    assert executions.results[0].workflow_id == target.id
    assert list(own_data_dir.rglob(f"*{queued.execution_id}*")), "the execution was stored elsewhere"

    # the documented errors arrive parsed as ErrorBody
    cancel = operation("executions", "cancel_execution").sync_detailed(
        execution_id=queued.execution_id, client=client
    )
    assert cancel.status_code == HTTPStatus.CONFLICT
    assert isinstance(cancel.parsed, models.ErrorBody)
    assert cancel.parsed.error.type_ == "Conflict"
    missing = operation("workflows", "get_workflow").sync_detailed(
        workflow_id="not-registered", client=client
    )
    assert missing.status_code == HTTPStatus.NOT_FOUND
    assert missing.parsed.error.type_ == "NotFound"
    too_urgent = operation("workflows", "request_execution").sync_detailed(
        workflow_id=target.id, client=client, body=models.ExecutionRequest(priority=10)
    )
    assert too_urgent.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert isinstance(too_urgent.parsed, models.ErrorBody)
    assert [p.location for p in too_urgent.parsed.error.details] == ["body.priority"]


def test_a_generated_client_sends_the_key_either_way_and_reads_auth_errors(
    connect: Callable[..., Any], mq: MessageQueue
) -> None:
    models = import_module(f"{PACKAGE}.models")
    depths = operation("queues", "queue_depths")
    by_header = connect("Client", headers={"X-API-Key": READ_KEY})
    answer = depths.sync(client=by_header)
    assert isinstance(answer, models.QueueDepths)
    assert {q.queue for q in answer.queues} >= {"workflow_execution", "dead_letter"}

    anonymous = connect("Client")
    refused = depths.sync_detailed(client=anonymous)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED
    assert isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.error.type_ == "Unauthorized"

    reader = connect("AuthenticatedClient", token=READ_KEY)
    body = models.RegisterWorkflowWorkflow.from_dict({"name": "x"})
    forbidden = operation("workflows", "register_workflow").sync_detailed(client=reader, body=body)
    assert forbidden.status_code == HTTPStatus.FORBIDDEN
    assert forbidden.parsed.error.type_ == "Forbidden"
    assert "write" in forbidden.parsed.error.message
    liveness = operation("health", "health").sync(client=anonymous)
    assert isinstance(liveness, models.Liveness)
