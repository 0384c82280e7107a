"""Each built-in data step through the engine (a one- or two-node workflow), plus the registry."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.errors import InvalidInput
from tests.workflows.conftest import make_workflow
from workflows import ExecutionStatus, StepStatus, execute_workflow, register_step_type
from workflows.steps import Step, StepContext, default_registry, get_step_type
from workflows.steps.process import operation_names
from workflows.steps.templating import render


def run_one(step_type: str, data: dict[str, Any], input_data: dict[str, Any]) -> Any:
    record = execute_workflow(make_workflow([{"id": "s", "type": step_type, "data": data}], []), input_data)
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    return record.output_data


def fail_one(step_type: str, data: dict[str, Any], input_data: dict[str, Any]) -> str:
    record = execute_workflow(make_workflow([{"id": "s", "type": step_type, "data": data}], []), input_data)
    assert record.status is ExecutionStatus.FAILED
    assert record.failed_step == "s"
    assert record.error_message is not None
    assert "step 's'" in record.error_message
    return record.error_message


def test_builtin_types_are_registered() -> None:
    assert set(default_registry.names()) >= {
        "input",
        "process",
        "transform",
        "data_validation",
        "condition",
        "http",
        "ai",
        "output",
    }


def test_input_selects_checks_and_defaults() -> None:
    data = {"fields": ["a", "c"], "required": ["a"], "defaults": {"c": 3}}
    assert run_one("input", data, {"a": 1, "b": 2}) == {"a": 1, "c": 3}
    assert "lacks required key(s): a" in fail_one("input", data, {"b": 2})


@pytest.mark.parametrize(
    ("operation", "params", "value", "expected"),
    [
        ("uppercase", {}, "abc", "ABC"),
        ("lowercase", {}, ["AB", "Cd"], ["ab", "cd"]),
        ("strip", {}, "  x  ", "x"),
        ("strip", {"chars": "-"}, "--x--", "x"),
        ("split", {"separator": ","}, "a,b", ["a", "b"]),
        ("join", {"separator": "-"}, ["a", 1], "a-1"),
        ("sum", {}, [1, 2, 3.5], 6.5),
        ("min", {}, [3, 1, 2], 1),
        ("max", {}, [3, 1, 2], 3),
        ("mean", {}, [1, 2, 3], 2.0),
        ("count", {}, [1, 2, 3], 3),
        ("count", {}, "abcd", 4),
        ("sort", {}, [3, 1, 2], [1, 2, 3]),
        ("sort", {"key": "n", "reverse": True}, [{"n": 1}, {"n": 3}], [{"n": 3}, {"n": 1}]),
        ("unique", {}, [1, 2, 1, 3, 2], [1, 2, 3]),
        ("reverse", {}, [1, 2], [2, 1]),
        ("flatten", {}, [[1], [2, 3], 4], [1, 2, 3, 4]),
        ("merge", {}, [{"a": 1}, {"b": 2, "a": 3}], {"a": 3, "b": 2}),
        ("set_field", {"name": "k", "value": [1]}, {"x": 1}, {"x": 1, "k": [1]}),
        ("pick", {"fields": ["x"]}, {"x": 1, "y": 2}, {"x": 1}),
        ("omit", {"fields": ["x"]}, {"x": 1, "y": 2}, {"y": 2}),
        (
            "template",
            {"template": "{name} has {items[0]} ({n:03d})"},
            {"name": "Ann", "items": ["pen"], "n": 7},
            "Ann has pen (007)",
        ),
    ],
)
def test_process_operations(operation: str, params: dict[str, Any], value: Any, expected: Any) -> None:
    # operations apply to a field, so non-object values can be tested through the engine
    out = run_one(
        "process", {"operation": operation, "params": params, "field": "v"}, {"v": value, "keep": 1}
    )
    assert out == {"v": expected, "keep": 1}


def test_process_without_field_outputs_the_result_and_target_keeps_the_source() -> None:
    assert run_one("process", {"operation": "count"}, {"a": 1, "b": 2}) == 2
    out = run_one("process", {"operation": "uppercase", "field": "n", "target": "loud"}, {"n": "hi"})
    assert out == {"n": "hi", "loud": "HI"}


def test_process_errors_name_the_problem() -> None:
    assert "sum needs numbers" in fail_one("process", {"operation": "sum", "field": "v"}, {"v": [1, "2"]})
    assert "field 'v' is not in the input" in fail_one(
        "process", {"operation": "sum", "field": "v"}, {"w": 1}
    )
    assert "template field 'missing'" in fail_one(
        "process", {"operation": "template", "params": {"template": "{missing}"}}, {"x": 1}
    )


def test_template_refuses_attribute_access_and_huge_widths() -> None:
    with pytest.raises(InvalidInput, match="attribute access"):
        render("{x.__class__.__mro__}", {"x": 1})
    with pytest.raises(InvalidInput, match="width"):
        render("{x:>99999999}", {"x": 1})
    with pytest.raises(InvalidInput, match="named"):
        render("{0}", {"x": 1})
    assert render("{value}!", 5) == "5!"


def test_transform_is_jmespath() -> None:
    data = {"orders": [{"id": 1, "total": 10}, {"id": 2, "total": 30}]}
    assert run_one("transform", {"expression": "orders[?total > `20`].id"}, data) == [2]
    assert run_one("transform", {"expression": "sum(orders[].total)"}, data) == 40
    assert "failed" in fail_one("transform", {"expression": "sum(orders)"}, data)


def test_data_validation_passes_valid_data_and_names_paths_of_invalid_data() -> None:
    schema = {
        "type": "object",
        "required": ["user"],
        "properties": {
            "user": {
                "type": "object",
                "required": ["age"],
                "properties": {"age": {"type": "integer", "minimum": 0}, "tags": {"type": "array"}},
            }
        },
    }
    data = {"user": {"age": 3, "tags": []}}
    assert run_one("data_validation", {"schema": schema}, data) == data
    message = fail_one("data_validation", {"schema": schema}, {"user": {"age": -1, "tags": "x"}})
    assert "$.user.age: -1 is less than the minimum of 0" in message
    assert "$.user.tags: 'x' is not of type 'array'" in message
    assert "StepFailed" in message


def test_output_selects() -> None:
    assert run_one("output", {"fields": ["a"]}, {"a": 1, "b": 2}) == {"a": 1}
    assert run_one("output", {"expression": "b"}, {"a": 1, "b": 2}) == 2
    assert run_one("output", {}, {"a": 1}) == {"a": 1}


def gate_workflow(expression: str) -> Any:
    return make_workflow(
        [
            {"id": "gate", "type": "condition", "data": {"expression": expression}},
            {
                "id": "yes",
                "type": "process",
                "data": {"operation": "set_field", "params": {"name": "path", "value": "yes"}},
            },
            {
                "id": "no",
                "type": "process",
                "data": {"operation": "set_field", "params": {"name": "path", "value": "no"}},
            },
            {"id": "after_yes", "type": "process", "data": {"operation": "count"}},
            {"id": "join", "type": "output", "data": {}},
        ],
        [
            {"source": "gate", "target": "yes", "branch": "true"},
            {"source": "gate", "target": "no", "branch": "false"},
            ("yes", "after_yes"),
            ("after_yes", "join"),
            ("no", "join"),
        ],
    )


@pytest.mark.parametrize(
    ("input_data", "taken", "skipped"),
    [
        ({"amount": 50}, "yes", {"no"}),
        ({"amount": 5}, "no", {"yes", "after_yes"}),
    ],
)
def test_condition_runs_one_branch_and_skips_the_other(
    input_data: dict[str, Any], taken: str, skipped: set[str]
) -> None:
    record = execute_workflow(gate_workflow("amount > `10`"), input_data)
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    status = {s.step_id: s.status for s in record.steps}
    assert {n for n, st in status.items() if st is StepStatus.SKIPPED} == skipped
    assert status[taken] is StepStatus.COMPLETED
    assert status["join"] is StepStatus.COMPLETED
    gate = next(s for s in record.steps if s.step_id == "gate")
    assert gate.branch == ("true" if taken == "yes" else "false")
    # the join got only its live predecessor's output (one predecessor: the output itself)
    if taken == "no":
        assert record.output_data == {"amount": 5, "path": "no"}
    else:
        assert record.output_data == 2  # count of {"amount", "path"}


def test_condition_uses_jmespath_truthiness() -> None:
    # JMESPath: 0 is true, empty list is false
    zero = execute_workflow(gate_workflow("amount"), {"amount": 0})
    assert next(s for s in zero.steps if s.step_id == "gate").branch == "true"
    empty = execute_workflow(gate_workflow("items"), {"items": []})
    assert next(s for s in empty.steps if s.step_id == "gate").branch == "false"


def test_new_step_types_join_the_registry() -> None:
    @register_step_type("test_double")
    class DoubleStep(Step):
        def run(self, data: Any, context: StepContext) -> Any:
            return {key: value * 2 for key, value in data.items()}

    try:
        assert get_step_type("test_double") is DoubleStep
        assert run_one("test_double", {}, {"x": 2}) == {"x": 4}
        with pytest.raises(InvalidInput, match="already registered"):
            register_step_type("test_double", type("Other", (Step,), {}))
    finally:
        default_registry.unregister("test_double")


def test_operation_registry_lists_the_safe_operations() -> None:
    assert {
        "uppercase",
        "lowercase",
        "strip",
        "sum",
        "count",
        "sort",
        "unique",
        "merge",
        "set_field",
        "template",
    } <= set(operation_names())
