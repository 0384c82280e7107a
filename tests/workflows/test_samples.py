"""The sample workflows run offline and end as their example inputs say."""

from __future__ import annotations

import pytest

from workflows import ExecutionStatus, execute_workflow, validate_workflow
from workflows.samples import load_samples, sample_inputs

CASES = [(w, s) for w in load_samples() for s in sample_inputs(w.id)]


def test_there_are_five_offline_samples_each_with_inputs_that_pass_and_fail() -> None:
    samples = load_samples()
    assert len(samples) >= 5
    for workflow in samples:
        assert "requires-network" not in workflow.tags
        assert all(node.type not in ("http", "ai") for node in workflow.definition.nodes)
        expectations = {s.expect for s in sample_inputs(workflow.id)}
        assert expectations == {"completed", "failed"}, workflow.id


def test_network_samples_are_marked_and_valid() -> None:
    network = [w for w in load_samples(include_network=True) if w.id not in {s.id for s in load_samples()}]
    assert network
    for workflow in network:
        assert "requires-network" in workflow.tags
        validate_workflow(workflow)


@pytest.mark.parametrize(("workflow", "sample"), CASES, ids=[f"{w.id}:{s.name}" for w, s in CASES])
def test_sample_runs_as_expected(workflow: object, sample: object) -> None:
    from workflows.model import Workflow
    from workflows.samples import SampleInput

    assert isinstance(workflow, Workflow) and isinstance(sample, SampleInput)
    record = execute_workflow(workflow, sample.input)
    assert record.status == ExecutionStatus(sample.expect), record.error_message
    if record.status is ExecutionStatus.FAILED:
        assert record.failed_step is not None
        assert f"step {record.failed_step!r}" in (record.error_message or "")
    else:
        assert record.output_data
