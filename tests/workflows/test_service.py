"""run_execution: the record in the store, idempotent by execution id."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from fabric.errors import BackendUnavailable, InvalidInput, NotFound
from tests.workflows.conftest import make_workflow
from workflows import ExecutionRecord, ExecutionStatus, WorkflowRepository
from workflows.service import RUNNING_RECORD_AFTER, run_execution
from workflows.steps import Step, StepConfig, StepContext, default_registry, register_step_type


class CountingConfig(StepConfig):
    #: run until the store has been written to (the running record), for at most 10 s
    until_stored: bool = False


class CountingStep(Step):
    Config = CountingConfig
    calls: ClassVar[int] = 0
    seen_running: ClassVar[list[ExecutionRecord | None]] = []
    repo: ClassVar[WorkflowRepository | None] = None
    #: set by a test's storage wrapper once an upload was tried
    stored: ClassVar[threading.Event] = threading.Event()

    def run(self, data: Any, context: StepContext) -> Any:
        CountingStep.calls += 1
        assert isinstance(self.config, CountingConfig)
        if self.config.until_stored:
            assert CountingStep.stored.wait(10), "no running record was stored while the step ran"
        if CountingStep.repo is not None:
            CountingStep.seen_running.append(CountingStep.repo.get_execution(context.execution_id))
        return {"calls": CountingStep.calls}


@pytest.fixture(autouse=True)
def counting(repo: WorkflowRepository) -> Iterator[None]:
    register_step_type("counting", CountingStep)
    CountingStep.calls = 0
    CountingStep.seen_running = []
    CountingStep.repo = repo
    CountingStep.stored = threading.Event()
    yield
    CountingStep.repo = None
    default_registry.unregister("counting")


def save(repo: WorkflowRepository, until_stored: bool = False) -> None:
    data = {"until_stored": True} if until_stored else {}
    repo.save_workflow(make_workflow([{"id": "c", "type": "counting", "data": data}], [], id="wf"))


def test_runs_stores_and_does_not_repeat_a_finished_execution(repo: WorkflowRepository) -> None:
    save(repo)
    record, ran = run_execution("wf", {"a": 1}, execution_id="x-1", repository=repo, record_running=0)
    assert ran and record.status is ExecutionStatus.COMPLETED
    # while the step ran, the store already held a running record
    running = CountingStep.seen_running[0]
    assert running is not None and running.status is ExecutionStatus.RUNNING
    assert repo.get_execution("x-1") == record
    again, ran_again = run_execution("wf", {"a": 1}, execution_id="x-1", repository=repo)
    assert not ran_again
    assert again == record
    assert CountingStep.calls == 1


def test_a_record_left_running_by_a_killed_worker_is_run_again(repo: WorkflowRepository) -> None:
    save(repo)
    repo.save_execution(ExecutionRecord(execution_id="x-2", workflow_id="wf", status=ExecutionStatus.RUNNING))
    record, ran = run_execution("wf", {}, execution_id="x-2", repository=repo)
    assert ran and record.status is ExecutionStatus.COMPLETED
    assert [r.status for r in repo.list_executions(workflow_id="wf")] == [ExecutionStatus.COMPLETED]


def test_refusals(repo: WorkflowRepository) -> None:
    with pytest.raises(NotFound, match="workflow 'nope'"):
        run_execution("nope", {}, execution_id="x-3", repository=repo)
    save(repo)
    run_execution("wf", {}, execution_id="x-4", repository=repo)
    repo.save_workflow(make_workflow([{"id": "c", "type": "counting", "data": {}}], [], id="other"))
    with pytest.raises(InvalidInput, match="belongs to workflow 'wf'"):
        run_execution("other", {}, execution_id="x-4", repository=repo)
    assert repo.get_execution("x-3") is None


def test_cancelled_execution_is_stored_as_cancelled(repo: WorkflowRepository) -> None:
    save(repo)
    record, _ = run_execution("wf", {}, execution_id="x-5", repository=repo, should_cancel=lambda: True)
    assert record.status is ExecutionStatus.CANCELLED
    stored = repo.get_execution("x-5")
    assert stored is not None and stored.status is ExecutionStatus.CANCELLED
    assert CountingStep.calls == 0


def test_an_execution_writes_its_record_once_or_its_running_record_and_its_record(
    repo: WorkflowRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(repo)
    written: list[str] = []
    upload = repo.storage.upload_file

    def recording(bucket: str, name: str, *args: Any, **kwargs: Any) -> str:
        written.append(name)
        return upload(bucket, name, *args, **kwargs)

    monkeypatch.setattr(repo.storage, "upload_file", recording)
    run_execution("wf", {"a": 1}, execution_id="x-9", repository=repo, record_running=0)
    assert written == ["executions/x-9/result.json", "executions/x-9/result.json"]
    written.clear()
    run_execution("wf", {"a": 2}, execution_id="x-10", repository=repo, record_running=None)
    assert written == ["executions/x-10/result.json"]
    # An execution that ends before its running record is due stores none (by default, within
    # RUNNING_RECORD_AFTER seconds; a long one here, so a loaded machine cannot make the step late).
    assert inspect.signature(run_execution).parameters["record_running"].default == RUNNING_RECORD_AFTER
    written.clear()
    run_execution("wf", {"a": 3}, execution_id="x-11", repository=repo, record_running=30)
    assert written == ["executions/x-11/result.json"]
    assert CountingStep.seen_running[-1] is None
    assert [r.execution_id for r in repo.list_executions(workflow_id="wf")] == ["x-9", "x-10", "x-11"]


def _signalling(
    repo: WorkflowRepository, monkeypatch: pytest.MonkeyPatch, fail_first: bool = False
) -> list[str]:
    """Wrap the store's uploads: each is recorded and wakes a step waiting ``until_stored``; with
    ``fail_first`` the first one fails as a store that is away would."""
    upload = repo.storage.upload_file
    calls: list[str] = []

    def signalling(bucket: str, name: str, *args: Any, **kwargs: Any) -> str:
        calls.append(name)
        try:
            if fail_first and len(calls) == 1:
                raise BackendUnavailable("the store is away for a moment")
            return upload(bucket, name, *args, **kwargs)
        finally:
            CountingStep.stored.set()

    monkeypatch.setattr(repo.storage, "upload_file", signalling)
    return calls


def test_a_longer_execution_is_visible_as_running_while_it_runs(
    repo: WorkflowRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(repo, until_stored=True)
    _signalling(repo, monkeypatch)
    record, ran = run_execution("wf", {"a": 1}, execution_id="x-12", repository=repo)
    assert ran and record.status is ExecutionStatus.COMPLETED
    # the step ran until the running record was stored (the default, after RUNNING_RECORD_AFTER seconds)
    running = CountingStep.seen_running[0]
    assert running is not None and running.status is ExecutionStatus.RUNNING
    assert running.started_at == record.started_at and running.input_data == {"a": 1}
    assert repo.get_execution("x-12") == record
    assert [r.execution_id for r in repo.list_executions(workflow_id="wf")] == ["x-12"]


def test_a_running_record_that_cannot_be_stored_does_not_stop_the_execution(
    repo: WorkflowRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(repo, until_stored=True)
    calls = _signalling(repo, monkeypatch, fail_first=True)
    record, ran = run_execution("wf", {}, execution_id="x-13", repository=repo)
    assert ran and record.status is ExecutionStatus.COMPLETED
    assert calls == ["executions/x-13/result.json", "executions/x-13/result.json"]  # running, then final
    assert repo.get_execution("x-13") == record
