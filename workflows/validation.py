"""Graph validation: a workflow is checked whole before it is stored or run.

Refused, with InvalidInput naming the node: duplicate node ids, an unknown step type, a bad step
configuration (each type's pydantic ``Config``), an edge from or to a missing node, a branch label that the
source step does not produce (or a missing one on a branching step's edge), and a cycle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fabric.errors import InvalidInput
from workflows.model import Edge, Workflow
from workflows.steps import Step, StepRegistry, default_registry


@dataclass
class WorkflowPlan:
    """A validated workflow, ready for the engine: built steps and the graph in dependency order."""

    workflow: Workflow
    steps: dict[str, Step]
    #: node ids in a topological order (ties kept in definition order)
    order: list[str]
    incoming: dict[str, list[Edge]] = field(default_factory=dict)
    outgoing: dict[str, list[Edge]] = field(default_factory=dict)

    @property
    def roots(self) -> list[str]:
        """Nodes without predecessors: they receive the execution input."""
        return [node_id for node_id in self.order if not self.incoming[node_id]]


def validate_workflow(workflow: Workflow, registry: StepRegistry | None = None) -> WorkflowPlan:
    """Check ``workflow``'s graph and every node's configuration; return the plan the engine runs.

    Raises InvalidInput whose message names the offending node (or edge).
    """
    registry = registry or default_registry
    nodes = workflow.definition.nodes
    if not nodes:
        raise InvalidInput(f"workflow {workflow.id!r} has no nodes")
    steps: dict[str, Step] = {}
    for node in nodes:
        if node.id in steps:
            raise InvalidInput(f"node {node.id!r}: duplicate node id")
        if node.type not in registry:
            raise InvalidInput(
                f"node {node.id!r}: unknown step type {node.type!r}; known: {', '.join(registry.names())}"
            )
        steps[node.id] = registry.get(node.type).from_data(node.id, node.data)

    incoming: dict[str, list[Edge]] = {node_id: [] for node_id in steps}
    outgoing: dict[str, list[Edge]] = {node_id: [] for node_id in steps}
    seen_edges: set[tuple[str, str]] = set()
    for edge in workflow.definition.edges:
        for end, node_id in (("source", edge.source), ("target", edge.target)):
            if node_id not in steps:
                raise InvalidInput(
                    f"edge {edge.source!r} -> {edge.target!r}: {end} node {node_id!r} does not exist"
                )
        if edge.source == edge.target:
            raise InvalidInput(f"node {edge.source!r}: an edge from the node to itself makes a cycle")
        if (edge.source, edge.target) in seen_edges:
            raise InvalidInput(f"edge {edge.source!r} -> {edge.target!r}: duplicate edge")
        seen_edges.add((edge.source, edge.target))
        source = steps[edge.source]
        branches = type(source).branches
        if branches and edge.branch not in branches:
            raise InvalidInput(
                f"node {edge.source!r} ({source.type_name}): edge to {edge.target!r} needs a branch label, "
                f"one of {', '.join(branches)} (got {edge.branch!r})"
            )
        if not branches and edge.branch is not None:
            raise InvalidInput(
                f"node {edge.source!r} ({source.type_name}): edge to {edge.target!r} has branch "
                f"{edge.branch!r} but the step does not branch"
            )
        incoming[edge.target].append(edge)
        outgoing[edge.source].append(edge)

    order = _topological_order(list(steps), incoming, outgoing)
    return WorkflowPlan(workflow=workflow, steps=steps, order=order, incoming=incoming, outgoing=outgoing)


def _topological_order(
    node_ids: list[str], incoming: dict[str, list[Edge]], outgoing: dict[str, list[Edge]]
) -> list[str]:
    remaining = {node_id: len(incoming[node_id]) for node_id in node_ids}
    queue = deque(node_id for node_id in node_ids if remaining[node_id] == 0)
    order: list[str] = []
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for edge in outgoing[node_id]:
            remaining[edge.target] -= 1
            if remaining[edge.target] == 0:
                queue.append(edge.target)
    if len(order) < len(node_ids):
        cycle = _find_cycle([n for n in node_ids if remaining[n] > 0], incoming, remaining)
        raise InvalidInput(f"node {cycle[0]!r}: the graph has a cycle ({' -> '.join([*cycle, cycle[0]])})")
    return order


def _find_cycle(
    candidates: list[str], incoming: dict[str, list[Edge]], remaining: dict[str, int]
) -> list[str]:
    """One cycle among the nodes Kahn's algorithm could not order, in edge direction."""
    # Each unordered node has an unordered predecessor, so walking backwards must repeat a node.
    path: list[str] = []
    position: dict[str, int] = {}
    node = candidates[0]
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = next(e.source for e in incoming[node] if remaining[e.source] > 0)
    return list(reversed(path[position[node] :]))
