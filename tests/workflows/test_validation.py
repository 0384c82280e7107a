"""Registration-time validation: every refusal names the node, and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.errors import InvalidInput
from tests.workflows.conftest import make_workflow
from workflows import WorkflowRepository, parse_workflow, validate_workflow

GOOD_NODES: list[dict[str, Any]] = [
    {"id": "in", "type": "input", "data": {}},
    {"id": "up", "type": "process", "data": {"operation": "uppercase", "field": "name"}},
    {"id": "out", "type": "output", "data": {}},
]


def test_a_good_workflow_validates_into_a_plan() -> None:
    plan = validate_workflow(make_workflow(GOOD_NODES, [("in", "up"), ("up", "out")]))
    assert plan.order == ["in", "up", "out"]
    assert plan.roots == ["in"]


@pytest.mark.parametrize(
    ("nodes", "edges", "node_named", "words"),
    [
        pytest.param(
            [*GOOD_NODES, {"id": "mystery", "type": "teleport", "data": {}}],
            [],
            "mystery",
            "unknown step type 'teleport'",
            id="unknown-type",
        ),
        pytest.param(GOOD_NODES, [("in", "ghost")], "ghost", "does not exist", id="edge-to-missing-target"),
        pytest.param(
            GOOD_NODES, [("phantom", "up")], "phantom", "does not exist", id="edge-from-missing-source"
        ),
        pytest.param(
            GOOD_NODES,
            [("in", "up"), ("up", "out"), ("out", "up")],
            "out",
            "cycle (out -> up -> out)",
            id="cycle",
        ),
        pytest.param(GOOD_NODES, [("up", "up")], "up", "cycle", id="self-loop"),
        pytest.param(
            [*GOOD_NODES, {"id": "up", "type": "input", "data": {}}], [], "up", "duplicate", id="duplicate-id"
        ),
        pytest.param(
            [{"id": "calc", "type": "process", "data": {"operation": "eval"}}],
            [],
            "calc",
            "unknown operation 'eval'",
            id="unknown-operation",
        ),
        pytest.param(
            [{"id": "calc", "type": "process", "data": {"operation": "sort", "params": {"key": 3, "x": 1}}}],
            [],
            "calc",
            "bad params",
            id="bad-operation-params",
        ),
        pytest.param(
            [{"id": "pick", "type": "transform", "data": {"expression": "items[?"}}],
            [],
            "pick",
            "JMESPath",
            id="bad-jmespath",
        ),
        pytest.param(
            [{"id": "pick", "type": "transform", "data": {}}], [], "pick", "expression", id="missing-field"
        ),
        pytest.param(
            [{"id": "in", "type": "input", "data": {"colour": "red"}}], [], "in", "colour", id="unknown-key"
        ),
        pytest.param(
            [{"id": "check", "type": "data_validation", "data": {"schema": {"type": "lizard"}}}],
            [],
            "check",
            "not a valid JSON Schema",
            id="bad-json-schema",
        ),
        pytest.param(
            [
                {
                    "id": "t",
                    "type": "process",
                    "data": {"operation": "template", "params": {"template": "{x.__class__}"}},
                }
            ],
            [],
            "t",
            "attribute access",
            id="template-attribute-access",
        ),
        pytest.param(
            [{"id": "slow", "type": "input", "data": {"retry": {"max_attempts": 0}}}],
            [],
            "slow",
            "max_attempts",
            id="bad-retry-policy",
        ),
        pytest.param(
            [
                {"id": "gate", "type": "condition", "data": {"expression": "ok"}},
                {"id": "next", "type": "output", "data": {}},
            ],
            [("gate", "next")],
            "gate",
            "needs a branch label",
            id="condition-edge-without-branch",
        ),
        pytest.param(
            GOOD_NODES,
            [{"source": "in", "target": "up", "branch": "true"}],
            "in",
            "does not branch",
            id="branch-on-plain-edge",
        ),
    ],
)
def test_bad_definitions_are_refused_naming_the_node(
    nodes: list[dict[str, Any]], edges: list[Any], node_named: str, words: str, repo: WorkflowRepository
) -> None:
    workflow = make_workflow(nodes, edges)
    with pytest.raises(InvalidInput) as caught:
        validate_workflow(workflow)
    assert repr(node_named) in str(caught.value)
    assert words in str(caught.value)
    # the repository validates before writing: nothing reaches the store
    with pytest.raises(InvalidInput):
        repo.save_workflow(workflow)
    assert repo.list_workflows() == []
    assert not repo.workflow_exists(workflow.id)


def test_cycle_message_shows_the_cycle() -> None:
    nodes = [{"id": n, "type": "input", "data": {}} for n in ("a", "b", "c", "d")]
    workflow = make_workflow(nodes, [("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")])
    with pytest.raises(InvalidInput) as caught:
        validate_workflow(workflow)
    # the cycle is named in edge order, starting anywhere on it; 'a' (upstream only) is not part of it
    assert "(c -> d -> b -> c)" in str(caught.value)
    assert "node 'c'" in str(caught.value)


def test_empty_workflow_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no nodes"):
        validate_workflow(make_workflow([], []))


def test_malformed_json_names_the_field() -> None:
    with pytest.raises(InvalidInput, match=r"definition\.nodes\.0\.id"):
        parse_workflow({"name": "x", "definition": {"nodes": [{"type": "input"}]}})
    with pytest.raises(InvalidInput, match=r"id"):
        parse_workflow({"id": "../etc/passwd", "name": "x"})


def test_edges_accept_condition_as_the_branch_label() -> None:
    workflow = make_workflow(
        [
            {"id": "gate", "type": "condition", "data": {"expression": "ok"}},
            {"id": "yes", "type": "output", "data": {}},
        ],
        [{"source": "gate", "target": "yes", "condition": "true"}],
    )
    plan = validate_workflow(workflow)
    assert plan.outgoing["gate"][0].branch == "true"
