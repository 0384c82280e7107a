"""The engine: data flow, concurrency of independent branches, retries, timeouts, cancellation, logs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from config import get_settings
from fabric.errors import BackendUnavailable, InvalidInput
from tests.workflows.conftest import make_workflow
from workflows import ExecutionStatus, StepLog, StepStatus, WorkflowEngine, execute_workflow
from workflows.steps import Step, StepConfig, StepContext, default_registry, register_step_type


class ProbeConfig(StepConfig):
    mode: str = "ok"
    fail_times: int = 0


class ProbeStep(Step):
    """A test step type: records start/end events, meets other probes at a barrier, fails on demand."""

    Config = ProbeConfig
    events: ClassVar[list[tuple[str, str]]] = []
    calls: ClassVar[dict[str, int]] = {}
    barrier: ClassVar[threading.Barrier] = threading.Barrier(2, timeout=10)
    release: ClassVar[threading.Event] = threading.Event()
    lock = threading.Lock()

    def run(self, data: Any, context: StepContext) -> Any:
        cfg = self.config
        assert isinstance(cfg, ProbeConfig)
        with self.lock:
            self.events.append(("start", self.node_id))
            self.calls[self.node_id] = self.calls.get(self.node_id, 0) + 1
            calls = self.calls[self.node_id]
        if cfg.mode == "rendezvous":
            # both branches must be inside run() at once, or the barrier breaks and the step fails
            self.barrier.wait()
        elif cfg.mode == "transient" and calls <= cfg.fail_times:
            raise BackendUnavailable(f"transient failure {calls}")
        elif cfg.mode == "permanent":
            raise InvalidInput("permanently wrong")
        elif cfg.mode == "bug":
            raise KeyError("a bug in the step")
        elif cfg.mode == "hang" and calls <= cfg.fail_times:
            self.release.wait(30)
        elif cfg.mode == "not_json":
            return {"when": object()}
        with self.lock:
            self.events.append(("end", self.node_id))
        return {"node": self.node_id, "saw": data}


@pytest.fixture(autouse=True)
def probe() -> Iterator[type[ProbeStep]]:
    register_step_type("probe", ProbeStep)
    ProbeStep.events = []
    ProbeStep.calls = {}
    ProbeStep.barrier = threading.Barrier(2, timeout=10)
    ProbeStep.release = threading.Event()
    yield ProbeStep
    ProbeStep.release.set()
    default_registry.unregister("probe")


def node(node_id: str, mode: str = "ok", **data: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "probe", "data": {"mode": mode, **data}}


def test_data_flow_roots_single_and_several_predecessors() -> None:
    workflow = make_workflow(
        [node("root"), node("left"), node("right"), node("join")],
        [("root", "left"), ("root", "right"), ("left", "join"), ("right", "join")],
    )
    record = execute_workflow(workflow, {"x": 1})
    assert record.status is ExecutionStatus.COMPLETED
    logs = {s.step_id: s for s in record.steps}
    assert logs["root"].input == {"x": 1}
    assert logs["left"].input == {"node": "root", "saw": {"x": 1}}
    # several predecessors: a dict keyed by predecessor id
    assert logs["join"].input == {"left": logs["left"].output, "right": logs["right"].output}
    # one sink, no output step: the sink's output is the execution's output
    assert record.output_data == logs["join"].output


def test_independent_branches_overlap() -> None:
    workflow = make_workflow(
        [node("root"), node("a", "rendezvous"), node("b", "rendezvous"), node("join")],
        [("root", "a"), ("root", "b"), ("a", "join"), ("b", "join")],
    )
    record = WorkflowEngine(max_parallel=2).run(workflow, {})
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    events = ProbeStep.events
    branch_events = [e for e in events if e[1] in ("a", "b")]
    # both branches started before either ended: they ran at the same time
    assert set(branch_events[:2]) == {("start", "a"), ("start", "b")}
    assert events.index(("end", "root")) < events.index(("start", "a"))
    assert events.index(("start", "join")) > max(events.index(("end", "a")), events.index(("end", "b")))


def test_max_parallel_one_runs_branches_one_at_a_time() -> None:
    workflow = make_workflow([node("root"), node("a"), node("b")], [("root", "a"), ("root", "b")])
    WorkflowEngine(max_parallel=1).run(workflow, {})
    starts_and_ends = [e for e in ProbeStep.events if e[1] in ("a", "b")]
    assert starts_and_ends[0][0] == "start" and starts_and_ends[1][0] == "end"


def test_transient_errors_are_retried_by_policy() -> None:
    retry = {"max_attempts": 3, "backoff": 0.01}
    workflow = make_workflow(
        [node("flaky", "transient", fail_times=2, retry=retry), node("next")], [("flaky", "next")]
    )
    record = execute_workflow(workflow, {})
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    flaky = record.steps[0]
    assert flaky.attempts == 3
    assert flaky.status is StepStatus.COMPLETED
    assert ProbeStep.calls["flaky"] == 3


def test_retries_stop_at_max_attempts() -> None:
    retry = {"max_attempts": 2, "backoff": 0}
    workflow = make_workflow(
        [node("flaky", "transient", fail_times=5, retry=retry), node("next")], [("flaky", "next")]
    )
    record = execute_workflow(workflow, {})
    assert record.status is ExecutionStatus.FAILED
    assert record.error_message == (
        "step 'flaky' (probe) failed after 2 attempt(s): BackendUnavailable: transient failure 2"
    )
    assert ProbeStep.calls["flaky"] == 2
    assert [s.status for s in record.steps] == [StepStatus.FAILED, StepStatus.NOT_RUN]


@pytest.mark.parametrize("mode", ["permanent", "bug"])
def test_permanent_errors_and_bugs_are_not_retried(mode: str) -> None:
    workflow = make_workflow([node("s", mode, retry={"max_attempts": 5, "backoff": 0})], [])
    record = execute_workflow(workflow, {})
    assert record.status is ExecutionStatus.FAILED
    assert ProbeStep.calls["s"] == 1
    assert record.steps[0].attempts == 1
    assert record.failed_step == "s"
    assert "step 's' (probe)" in (record.error_message or "")


def test_a_step_past_its_timeout_fails_and_is_retried_as_transient() -> None:
    # first attempt hangs past timeout; the retry (second call) returns at once
    hang = node("slow", "hang", fail_times=1, timeout_seconds=0.2, retry={"max_attempts": 2, "backoff": 0})
    record = execute_workflow(make_workflow([hang], []), {})
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert record.steps[0].attempts == 2

    ProbeStep.calls.clear()
    always = node("slow", "hang", fail_times=9, timeout_seconds=0.2)
    record = execute_workflow(make_workflow([always], []), {})
    assert record.status is ExecutionStatus.FAILED
    assert "StepTimeout: timed out after 0.2s" in (record.error_message or "")


def test_default_timeout_comes_from_settings() -> None:
    settings = get_settings().model_copy(update={"workflow_step_timeout": 0.2})
    record = WorkflowEngine(settings=settings).run(
        make_workflow([node("slow", "hang", fail_times=1)], []), {}
    )
    assert record.status is ExecutionStatus.FAILED
    assert "timed out after 0.2s" in (record.error_message or "")


def test_cancellation_is_honoured_between_steps() -> None:
    cancel = threading.Event()
    seen: list[StepLog] = []

    def on_step(log: StepLog) -> None:
        seen.append(log)
        if log.step_id == "first":
            cancel.set()

    workflow = make_workflow(
        [node("first"), node("second"), node("third")], [("first", "second"), ("second", "third")]
    )
    record = execute_workflow(workflow, {}, should_cancel=cancel.is_set, on_step=on_step)
    assert record.status is ExecutionStatus.CANCELLED
    assert record.error_message == "cancelled before step 'second'"
    assert [(s.step_id, s.status) for s in record.steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.NOT_RUN),
        ("third", StepStatus.NOT_RUN),
    ]
    assert "second" not in ProbeStep.calls
    assert record.completed_at is not None
    assert [log.step_id for log in seen] == ["first", "second", "third"]


def test_cancelled_before_any_step() -> None:
    record = execute_workflow(make_workflow([node("only")], []), {}, should_cancel=lambda: True)
    assert record.status is ExecutionStatus.CANCELLED
    assert ProbeStep.calls == {}
    assert record.output_data is None


def test_failure_stops_new_steps_but_running_branches_finish() -> None:
    workflow = make_workflow(
        [node("root"), node("bad", "permanent"), node("good"), node("after_good")],
        [("root", "bad"), ("root", "good"), ("good", "after_good")],
    )
    record = WorkflowEngine(max_parallel=2).run(workflow, {})
    assert record.status is ExecutionStatus.FAILED
    assert record.failed_step == "bad"
    status = {s.step_id: s.status for s in record.steps}
    assert status["bad"] is StepStatus.FAILED
    assert status["after_good"] in (StepStatus.NOT_RUN, StepStatus.COMPLETED)
    assert record.output_data is None


def test_step_logs_hold_input_output_timing_and_errors() -> None:
    record = execute_workflow(make_workflow([node("s")], []), {"k": "v"}, execution_id="exec-1")
    log = record.steps[0]
    assert record.execution_id == "exec-1"
    assert log.type == "probe"
    assert log.input == {"k": "v"}
    assert log.output == {"node": "s", "saw": {"k": "v"}}
    assert log.duration_ms is not None and log.duration_ms >= 0
    assert log.started_at is not None and record.started_at is not None and record.completed_at is not None
    assert record.started_at <= log.started_at <= record.completed_at
    entries = record.log_entries()
    assert entries[0]["id"] == "exec-1:s" and entries[0]["level"] == "INFO"


def test_output_must_be_json() -> None:
    record = execute_workflow(make_workflow([node("s", "not_json")], []), {})
    assert record.status is ExecutionStatus.FAILED
    assert "not JSON-serialisable" in (record.error_message or "")


def test_branches_do_not_share_mutable_input() -> None:
    workflow = make_workflow(
        [
            {"id": "root", "type": "input", "data": {}},
            {
                "id": "a",
                "type": "process",
                "data": {"operation": "set_field", "params": {"name": "x", "value": "a"}},
            },
            {"id": "b", "type": "process", "data": {"operation": "uppercase", "field": "x"}},
        ],
        [("root", "a"), ("root", "b")],
    )
    record = execute_workflow(workflow, {"x": "orig"})
    assert record.output_data == {"a": {"x": "a"}, "b": {"x": "ORIG"}}


def test_input_data_must_be_an_object() -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        execute_workflow(make_workflow([node("s")], []), [1, 2])  # type: ignore[arg-type]


def _run_in_child(conn: Any) -> None:
    workflow = make_workflow([node("root"), node("a"), node("b")], [("root", "a"), ("root", "b")])
    record = execute_workflow(workflow, {"x": 1})
    conn.send((record.status.value, sorted(record.output_data)))
    conn.close()


def test_engine_works_in_a_forked_child_after_use_in_the_parent() -> None:
    # Celery's prefork pool forks workers; the step threads of the parent do not exist in the child
    import multiprocessing

    execute_workflow(make_workflow([node("warm")], []), {})
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_run_in_child, args=(child_end,))
    child.start()
    assert parent_end.poll(30), "the child did not answer"
    assert parent_end.recv() == ("completed", ["a", "b"])
    child.join(10)
    assert child.exitcode == 0


def test_finished_states() -> None:
    assert {s for s in ExecutionStatus if s.finished} == {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
    }


def test_running_for_calls_back_once_while_a_long_step_runs() -> None:
    workflow = make_workflow([node("first"), node("long", "hang", fail_times=1), node("last")],
                             [("first", "long"), ("long", "last")])  # fmt: skip
    seen: list[tuple[ExecutionStatus, list[tuple[str, str]]]] = []

    def running(record: Any) -> None:
        seen.append((record.status, list(ProbeStep.events)))
        ProbeStep.release.set()  # the long step ends once the callback has seen it running

    record = WorkflowEngine().run(workflow, {}, running_for=(0.05, running))
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert len(seen) == 1
    status, events = seen[0]
    assert status is ExecutionStatus.RUNNING
    assert events[-1] == ("start", "long")  # called in the engine's thread while the step went on


def test_running_for_zero_calls_back_before_the_first_step_and_never_for_a_short_run() -> None:
    workflow = make_workflow([node("a"), node("b")], [("a", "b")])
    seen: list[int] = []
    WorkflowEngine().run(workflow, {}, running_for=(0.0, lambda record: seen.append(len(ProbeStep.events))))
    assert seen == [0]
    seen.clear()
    record = WorkflowEngine().run(workflow, {}, running_for=(30.0, lambda record: seen.append(1)))
    assert record.status is ExecutionStatus.COMPLETED and seen == []


def test_running_for_calls_back_during_a_retry_backoff() -> None:
    retry = {"max_attempts": 2, "backoff": 0.3}
    workflow = make_workflow([node("flaky", "transient", fail_times=1, retry=retry)], [])
    seen: list[int] = []
    record = WorkflowEngine().run(
        workflow, {}, running_for=(0.05, lambda record: seen.append(ProbeStep.calls["flaky"]))
    )
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert seen == [1]  # after the failed first try, before the second
