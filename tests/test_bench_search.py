"""The search benchmark's smoke mode runs and produces sane figures (not a speed assertion)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.search import QUERIES, markdown, run

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_measures_both_backends_against_their_baselines() -> None:
    results = run(smoke=True)

    for key in ("sqlite", "elasticsearch"):
        r = results[key]
        assert r["bulk_rate"] > 0
        assert r["single_rate"] > 0
        assert r["ratio"] == r["bulk_rate"] / r["single_rate"]
        assert all(q["p50_ms"] > 0 and q["p95_ms"] >= q["p50_ms"] for q in r["queries"])
    sqlite = results["sqlite"]
    assert len(sqlite["queries"]) == 2 * len(QUERIES)  # every query at both sizes
    assert [g["to"] for g in sqlite["growth"]] == [6_000]
    # The frequent pair matches in a few thousand entries, so a page is never empty.
    assert all(q["returned"] > 0 for q in sqlite["queries"] if q["query"] == "worker started")
    report = markdown(results)
    assert "| SQLite FTS5 (embedded) (2,000 bulk / 200 single) |" in report
    assert "Elasticsearch adapter on osmem" in report


def test_smoke_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.search", "--smoke"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "## Log queries (newest first, limit 100)" in result.stdout
