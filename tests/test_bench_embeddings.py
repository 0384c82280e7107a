"""The embeddings benchmark's smoke mode runs and produces sane figures (not a speed assertion)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.embeddings import load_quality_set, markdown, run

ROOT = Path(__file__).resolve().parents[1]


def test_quality_set_is_fifty_labelled_workflows() -> None:
    ids, docs, queries, relevant = load_quality_set()
    assert len(ids) == len(set(ids)) == len(docs) == 50
    assert len(queries) == 50
    assert set(relevant) <= set(ids)


def test_smoke_run_gives_rates_and_metrics_in_range() -> None:
    results = run(smoke=True)
    assert len(results["throughput"]) == 2  # the default and the static model
    for row in results["throughput"].values():
        assert row["batched"] > 0
        assert row["single"] > 0
        assert row["ratio"] == row["batched"] / row["single"]
    assert len(results["quality"]) == 3  # and the TF-IDF baseline
    for metrics in results["quality"].values():
        assert 0.0 <= metrics["hit@1"] <= metrics["hit@3"] <= 1.0
        assert metrics["hit@1"] <= metrics["mrr"] <= 1.0
        assert metrics["mrr"] > 0.2  # far above chance (1/50 at hit@1): the model really ranks
    for shares in results["thresholds"].values():
        assert all(
            0.0 <= shares[key] <= 1.0 for key in ("right>=0.7", "right>=0.6", "wrong<0.7", "wrong<0.6")
        )
        assert shares["right>=0.7"] <= shares["right>=0.6"]
    for cost in results["cost"].values():
        assert cost["installed_mb"] > 1 and cost["load_s"] > 0 and cost["dimension"] > 0
    report = markdown(results)
    assert "| minilm: all-MiniLM-L6-v2 int8, onnxruntime (385-dim, default) |" in report
    assert "## Scores against the guide's thresholds" in report


def test_smoke_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.embeddings", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "## Search quality" in result.stdout
