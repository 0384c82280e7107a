"""The engine: runs a validated workflow's steps in dependency order and returns the execution record.

* Steps are synchronous functions; each attempt runs on a pool of reused daemon threads. The scheduler
  (the caller's thread) starts every step whose predecessors are done, so independent branches overlap, up
  to ``settings.workflow_max_parallel_steps`` at a time. :meth:`WorkflowEngine.run` is a plain blocking call,
  which is what a Celery worker process needs.
* Data flow (see :mod:`workflows.model`): root nodes get the execution input; a node with one live
  predecessor gets its output; with several, ``{predecessor_id: output}``. Inputs are deep copies, so
  concurrent branches never share mutable data. Outputs must be JSON-serialisable.
* Retries: a step raising :class:`~fabric.errors.TransientError` (a timeout included) is tried again per
  its node's ``retry`` policy (``max_attempts``, ``backoff`` seconds, ``factor``); any other error fails it at
  once. The first step to fail fails the execution: no new step starts, running ones are waited for, and
  ``error_message`` names the step.
* Timeout: an attempt running past ``timeout_seconds`` (node data; default ``settings.workflow_step_timeout``)
  is abandoned and counts as a StepTimeout. Python cannot kill a thread, so step types doing I/O pass
  ``context.timeout`` to their clients as well; an abandoned attempt's late result is ignored.
* Cancellation: ``should_cancel()`` is asked before each step (and each retry) starts; once it says yes no
  step starts, running ones finish, and the record says cancelled.

The engine does not talk to Celery or the object store: the caller persists the record.
"""

from __future__ import annotations

import copy
import functools
import heapq
import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from config import get_settings
from config.settings import Settings
from fabric.errors import InvalidInput, TransientError
from fabric.registry import PerProcess
from workflows.model import ExecutionRecord, ExecutionStatus, StepLog, StepStatus, Workflow, new_id, utcnow
from workflows.steps import Step, StepContext, StepFailed, StepRegistry, StepResult, StepTimeout
from workflows.validation import WorkflowPlan, validate_workflow

ShouldCancel = Callable[[], bool]
OnStep = Callable[[StepLog], None]
#: Called once, in the engine's thread, with the running record, when an execution has run a given time
#: (``running_for``).
OnRunningFor = Callable[[ExecutionRecord], None]


@dataclass
class _Attempt:
    node_id: str
    number: int
    timeout: float
    deadline: float


@dataclass
class _Progress:
    """What the scheduler knows about a started node until its StepLog is written."""

    input: Any
    started_at: Any
    started_mono: float
    attempts: int = 0
    last_error: str | None = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _json_copy(value: Any, node_id: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise StepFailed(f"step {node_id!r} returned output that is not JSON-serialisable: {exc}") from exc


def _call_step(future: Future[StepResult], step: Step, data: Any, context: StepContext) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = step.execute(data, context)
        future.set_result(StepResult(_json_copy(result.output, context.node_id), result.branch))
    # every error, BaseException included, is handed to the scheduler, which decides retry or failure
    except BaseException as exc:
        future.set_exception(exc)


class _StepThreads:
    """Daemon threads that run step attempts, reused between steps (starting a thread per step cost more than
    most steps). A thread stuck in an abandoned (timed-out) attempt keeps only itself busy: a new thread
    starts whenever none is idle. Daemon, so a stuck step never keeps the worker process alive at exit;
    idle threads leave after ``idle_seconds``.
    """

    def __init__(self, idle_seconds: float = 30.0) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._idle_seconds = idle_seconds

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._tasks.put(fn)
        if spawn:
            threading.Thread(target=self._work, name="wf-step", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                fn = self._tasks.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        return
                # claimed by a submit between the timeout and the lock: its task is on the way
                continue
            fn()
            del fn
            with self._lock:
                self._idle += 1


# A forked worker child builds its own (threads do not survive a fork); never closed: the threads are idle
# daemons that end with the process.
_threads: PerProcess[_StepThreads] = PerProcess("workflow step threads", _StepThreads, close=lambda t: None)


def _step_threads() -> _StepThreads:
    """The process's step threads."""
    return _threads.get()


class WorkflowEngine:
    """Runs workflows. One engine can serve many executions, one after another or from several threads."""

    def __init__(
        self,
        registry: StepRegistry | None = None,
        *,
        settings: Settings | None = None,
        max_parallel: int | None = None,
    ) -> None:
        """``registry``: step types (default: the built-in registry); ``settings``: default
        ``get_settings()`` at run time; ``max_parallel``: steps at once (default from settings)."""
        self.registry = registry
        self._settings = settings
        self._max_parallel = max_parallel

    def plan(self, workflow: Workflow) -> WorkflowPlan:
        """Validate ``workflow`` into a runnable plan. Raises InvalidInput naming the bad node."""
        return validate_workflow(workflow, self.registry)

    def run(
        self,
        workflow: Workflow | WorkflowPlan,
        input_data: dict[str, Any] | None = None,
        *,
        execution_id: str | None = None,
        should_cancel: ShouldCancel | None = None,
        on_step: OnStep | None = None,
        running_for: tuple[float, OnRunningFor] | None = None,
    ) -> ExecutionRecord:
        """Execute ``workflow`` on ``input_data`` and return its record (completed, failed or cancelled).

        ``execution_id``: the id to record (default: a new one). ``should_cancel``: asked before each step
        starts. ``on_step``: called in this thread with each step's log as soon as the step ends.
        ``running_for=(seconds, callback)``: ``callback(record)`` is called once, in this thread, with the
        record (status running) if the execution is still running ``seconds`` after it began (0: before its
        first step), while its steps go on.

        A failing step does not raise: it fails the record. Raises InvalidInput only for an invalid workflow
        or input_data that is not a JSON object.
        """
        settings = self._settings or get_settings()
        plan = workflow if isinstance(workflow, WorkflowPlan) else self.plan(workflow)
        if input_data is None:
            input_data = {}
        if not isinstance(input_data, dict):
            raise InvalidInput(f"input_data must be a JSON object, got {type(input_data).__name__}")
        input_data = _json_copy(input_data, "(input_data)")
        record = ExecutionRecord(
            execution_id=execution_id or new_id(),
            workflow_id=plan.workflow.id,
            status=ExecutionStatus.RUNNING,
            input_data=input_data,
            started_at=utcnow(),
        )
        _Run(
            plan=plan,
            record=record,
            settings=settings,
            should_cancel=should_cancel or (lambda: False),
            on_step=on_step,
            max_parallel=self._max_parallel or settings.workflow_max_parallel_steps,
            running_for=running_for,
        ).execute()
        return record


class _Run:
    """The state of one execution; lives in the caller's thread only (workers touch only their Future)."""

    def __init__(
        self,
        *,
        plan: WorkflowPlan,
        record: ExecutionRecord,
        settings: Settings,
        should_cancel: ShouldCancel,
        on_step: OnStep | None,
        max_parallel: int,
        running_for: tuple[float, OnRunningFor] | None = None,
    ) -> None:
        self.plan = plan
        self.record = record
        self.settings = settings
        self.should_cancel = should_cancel
        self.on_step = on_step
        self.max_parallel = max_parallel
        self.remaining = {node_id: len(plan.incoming[node_id]) for node_id in plan.order}
        self.live_preds: dict[str, set[str]] = {node_id: set() for node_id in plan.order}
        self.ready: deque[str] = deque(plan.roots)
        self.retries: list[tuple[float, int, str]] = []  # (due, attempt number, node id), a heap
        self.running: dict[Future[StepResult], _Attempt] = {}
        self.progress: dict[str, _Progress] = {}
        self.outputs: dict[str, Any] = {}
        self.logs: dict[str, StepLog] = {}
        self.stop: ExecutionStatus | None = None
        self.on_running_for: OnRunningFor | None = running_for[1] if running_for else None
        self.running_for_due = time.monotonic() + running_for[0] if running_for else math.inf

    # --- the loop -----------------------------------------------------------------------------------------

    def execute(self) -> None:
        while True:
            self._check_running_for()
            if self.stop is None:
                self._start_ready()
            if not self.running:
                if self.stop is not None or not self.retries:
                    break
                if not self.ready:
                    # only retries are waiting: sleep until the first is due (the backoff)
                    due = min(self.retries[0][0], self.running_for_due)
                    time.sleep(max(0.0, due - time.monotonic()))
                continue
            wait(list(self.running), timeout=self._wait_timeout(), return_when=FIRST_COMPLETED)
            self._check_running_for()
            now = time.monotonic()
            for future, attempt in list(self.running.items()):
                if future.done():
                    del self.running[future]
                    self._finished(attempt, future)
                elif attempt.deadline <= now:
                    # abandoned: the thread may still end later; its result is ignored
                    del self.running[future]
                    self._failed_attempt(attempt, StepTimeout(f"timed out after {attempt.timeout:g}s"))
        self._finalise()

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        horizon = min(attempt.deadline for attempt in self.running.values())
        if self.stop is None and self.retries:
            horizon = min(horizon, self.retries[0][0])
        return max(0.0, min(horizon, self.running_for_due) - now)

    def _check_running_for(self) -> None:
        if self.on_running_for is not None and time.monotonic() >= self.running_for_due:
            callback, self.on_running_for, self.running_for_due = self.on_running_for, None, math.inf
            callback(self.record)

    def _start_ready(self) -> None:
        while len(self.running) < self.max_parallel:
            if self.retries and self.retries[0][0] <= time.monotonic():
                _due, number, node_id = heapq.heappop(self.retries)
                if self.should_cancel():
                    heapq.heappush(self.retries, (_due, number, node_id))
                    self.stop = ExecutionStatus.CANCELLED
                    self.record.error_message = f"cancelled before retry {number} of step {node_id!r}"
                    return
            elif self.ready:
                node_id, number = self.ready[0], 1
                if self.should_cancel():
                    self.stop = ExecutionStatus.CANCELLED
                    self.record.error_message = f"cancelled before step {node_id!r}"
                    return
                self.ready.popleft()
            else:
                return
            self._start(node_id, number)

    def _start(self, node_id: str, number: int) -> None:
        step = self.plan.steps[node_id]
        if number == 1:
            self.progress[node_id] = _Progress(
                input=self._input_for(node_id), started_at=utcnow(), started_mono=time.monotonic()
            )
        progress = self.progress[node_id]
        progress.attempts = number
        timeout = step.config.timeout_seconds or self.settings.workflow_step_timeout
        context = StepContext(
            execution_id=self.record.execution_id,
            workflow_id=self.record.workflow_id,
            node_id=node_id,
            execution_input=copy.deepcopy(self.record.input_data),
            settings=self.settings,
            attempt=number,
            timeout=timeout,
        )
        future: Future[StepResult] = Future()
        data = copy.deepcopy(progress.input)
        self.running[future] = _Attempt(node_id, number, timeout, time.monotonic() + timeout)
        _step_threads().submit(functools.partial(_call_step, future, step, data, context))

    def _input_for(self, node_id: str) -> Any:
        incoming = self.plan.incoming[node_id]
        if not incoming:
            return self.record.input_data
        live = [edge.source for edge in incoming if edge.source in self.live_preds[node_id]]
        if len(live) == 1:
            return self.outputs[live[0]]
        return {source: self.outputs[source] for source in live}

    # --- outcomes -----------------------------------------------------------------------------------------

    def _finished(self, attempt: _Attempt, future: Future[StepResult]) -> None:
        exc = future.exception()
        if exc is not None:
            self._failed_attempt(attempt, exc)
            return
        result = future.result()
        node_id = attempt.node_id
        self.outputs[node_id] = result.output
        self._log(node_id, StepStatus.COMPLETED, output=result.output, branch=result.branch)
        self._resolve(node_id, result.branch)

    def _failed_attempt(self, attempt: _Attempt, exc: BaseException) -> None:
        node_id = attempt.node_id
        progress = self.progress[node_id]
        progress.last_error = _describe(exc)
        policy = self.plan.steps[node_id].config.retry
        if isinstance(exc, TransientError) and attempt.number < policy.max_attempts and self.stop is None:
            due = time.monotonic() + policy.delay_before(attempt.number + 1)
            heapq.heappush(self.retries, (due, attempt.number + 1, node_id))
            return
        self._log(node_id, StepStatus.FAILED, error=progress.last_error)
        if self.stop is None:
            step = self.plan.steps[node_id]
            self.stop = ExecutionStatus.FAILED
            self.record.failed_step = node_id
            self.record.error_message = (
                f"step {node_id!r} ({step.type_name}) failed after {attempt.number} attempt(s): "
                f"{progress.last_error}"
            )

    def _resolve(self, node_id: str, branch: str | None) -> None:
        """Mark ``node_id``'s outgoing edges live or dead; queue or skip targets whose inputs are settled."""
        pending: list[tuple[str, str | None, bool]] = [(node_id, branch, True)]
        while pending:
            source, taken, alive = pending.pop()
            for edge in self.plan.outgoing[source]:
                target = edge.target
                if alive and (edge.branch is None or edge.branch == taken):
                    self.live_preds[target].add(source)
                self.remaining[target] -= 1
                if self.remaining[target] == 0:
                    if self.live_preds[target]:
                        self.ready.append(target)
                    else:
                        self._log(target, StepStatus.SKIPPED)
                        pending.append((target, None, False))

    def _log(
        self,
        node_id: str,
        status: StepStatus,
        *,
        output: Any = None,
        error: str | None = None,
        branch: str | None = None,
    ) -> None:
        progress = self.progress.get(node_id)
        log = StepLog(
            step_id=node_id,
            type=self.plan.steps[node_id].type_name,
            status=status,
            input=progress.input if progress else None,
            output=output,
            started_at=progress.started_at if progress else None,
            duration_ms=(time.monotonic() - progress.started_mono) * 1000.0 if progress else None,
            error=error,
            attempts=progress.attempts if progress else 0,
            branch=branch,
        )
        self.logs[node_id] = log
        if self.on_step is not None:
            self.on_step(log)

    def _finalise(self) -> None:
        for node_id in self.plan.order:
            if node_id not in self.logs:
                progress = self.progress.get(node_id)
                # a node waiting for a retry when the execution stopped keeps its last error
                self._log(node_id, StepStatus.NOT_RUN, error=progress.last_error if progress else None)
        record = self.record
        record.steps = [self.logs[node_id] for node_id in self.plan.order]
        record.status = self.stop or ExecutionStatus.COMPLETED
        if record.status is ExecutionStatus.COMPLETED:
            record.output_data = self._output_data()
        record.completed_at = utcnow()

    def _output_data(self) -> Any:
        """Output steps' outputs; without output steps, the sinks' (nodes without successors).

        One such node: its output. Several: ``{node_id: output}`` of those that ran (skipped ones left out).
        """
        chosen = [n for n in self.plan.order if self.plan.steps[n].type_name == "output"]
        if not chosen:
            chosen = [n for n in self.plan.order if not self.plan.outgoing[n]]
        ran = [n for n in chosen if n in self.outputs]
        if len(chosen) == 1:
            return self.outputs.get(chosen[0])
        return {node_id: self.outputs[node_id] for node_id in ran}


_engine: PerProcess[WorkflowEngine] = PerProcess("workflow engine", WorkflowEngine, close=lambda e: None)


def get_engine() -> WorkflowEngine:
    """The process's engine over the default step registry and settings."""
    return _engine.get()


def reset_engine() -> None:
    """Forget the process's engine (tests that change settings)."""
    _engine.reset()


def execute_workflow(
    workflow: Workflow | WorkflowPlan,
    input_data: dict[str, Any] | None = None,
    *,
    execution_id: str | None = None,
    should_cancel: ShouldCancel | None = None,
    on_step: OnStep | None = None,
) -> ExecutionRecord:
    """Run ``workflow`` with the process's engine; see :meth:`WorkflowEngine.run`."""
    return get_engine().run(
        workflow, input_data, execution_id=execution_id, should_cancel=should_cancel, on_step=on_step
    )
