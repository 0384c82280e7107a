"""The storage benchmark's smoke mode runs and produces sane figures (not a speed assertion)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.storage import markdown, run

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_measures_every_store_against_the_baseline() -> None:
    results = run(smoke=True)
    rows = results["rows"]
    assert len(rows) == 4
    baseline = rows["baseline: plain write_bytes / read_bytes"]
    assert all(cell["ratio"] == 1.0 for cell in baseline.values())
    for row in rows.values():
        for cell in row.values():
            assert cell["rate"] > 0
            assert cell["ratio"] > 0
    report = markdown(results)
    assert "| MinIO adapter on nanio (loopback) |" in report


def test_smoke_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--smoke"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| local store (default: fsync on) |" in result.stdout
