"""The vector benchmark's smoke mode runs and produces sane figures (not a speed assertion)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.vectors import markdown, run, workflows

ROOT = Path(__file__).resolve().parents[1]


def test_generated_workflows_are_distinct_and_labelled() -> None:
    data = workflows(500)
    assert len({text for text, _ in data}) == 500
    assert all(set(meta) == {"system", "tags", "even"} and len(meta["tags"]) == 2 for _, meta in data)


def test_smoke_run_gives_sane_figures() -> None:
    results = run(smoke=True)
    assert results["store_rate"] > 0 and results["single_rate"] > 0 and results["store_embed_rate"] > 0
    assert [row["ef"] for row in results["sweep"]] == [16, 32, 64, 128]
    for row in results["sweep"]:
        assert 0.5 <= row["recall"] <= 1.0  # the approximate index really finds the neighbours
        assert row["p50_ms"] > 0
    assert results["exact_p50_ms"] > 0
    for row in results["end_to_end"].values():
        assert row["mean_results"] == 10.0
    assert results["count"] == results["n"] + 1000
    report = markdown(results)
    assert "## Recall and latency of the approximate index" in report
    assert "| 64 (default) |" in report


def test_smoke_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.vectors", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "## Bulk store" in result.stdout
