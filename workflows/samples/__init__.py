"""Sample workflows the demo registers, with example inputs (some fail by design).

``*.json`` here run offline; ``network/*.json`` need network access and a chat provider and are left out of
:func:`load_samples` unless asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflows.model import Workflow, parse_workflow

SAMPLES_DIR = Path(__file__).parent


@dataclass(frozen=True)
class SampleInput:
    """An example execution input and the status it is expected to end in."""

    name: str
    input: dict[str, Any]
    expect: str


def load_samples(*, include_network: bool = False) -> list[Workflow]:
    """The sample workflows, ordered by id (network-dependent ones only if ``include_network``).

    Raises InvalidInput if a sample file is not a valid workflow.
    """
    paths = sorted(SAMPLES_DIR.glob("*.json"))
    if include_network:
        paths += sorted((SAMPLES_DIR / "network").glob("*.json"))
    return sorted((parse_workflow(path.read_text("utf-8")) for path in paths), key=lambda w: w.id)


def sample_inputs(workflow_id: str) -> list[SampleInput]:
    """Example inputs for a sample workflow (an empty list when it has none)."""
    path = SAMPLES_DIR / "inputs" / f"{workflow_id}.json"
    if not path.exists():
        return []
    return [
        SampleInput(item["name"], item["input"], item["expect"])
        for item in json.loads(path.read_text("utf-8"))
    ]
