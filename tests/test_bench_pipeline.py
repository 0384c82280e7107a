from __future__ import annotations

import os

import pytest

from bench import pipeline
from config import get_settings


@pytest.mark.slow
def test_pipeline_benchmark_smoke() -> None:
    before = (os.environ["REDIS_URL"], os.environ["DATA_DIR"])
    results = pipeline.run(10, 40)
    # The benchmark's private Redis and data directory do not leak into this process's settings.
    assert (os.environ["REDIS_URL"], os.environ["DATA_DIR"]) == before
    assert get_settings().redis_url == before[0]
    assert set(results) == {
        "lean", "bare", "ours", "single", "bulk", "prefork", "writes_single", "writes_bulk"
    }  # fmt: skip
    assert results["ours"].count == 10 and results["bare"].count == 10 and results["lean"].count == 10
    assert "lean Celery" in results["lean"].label
    for rate in results.values():
        assert rate.seconds > 0
        assert rate.per_second > 0
    assert "10 runs counted" in results["ours"].extra
    text = pipeline.report(results, 10, 40)
    assert "ratio ours/bare" in text and "writes alone" in text
    assert "ratio ours/lean canvas (target >= 0.85)" in text
    assert "executions/s (target >= 100)" in text
    # Where the CPU went, per process, for each kind.
    assert "CPU milliseconds per pipeline" in text
    for kind in ("lean", "bare", "ours"):
        cpu = results[kind].cpu_ms
        assert set(cpu) == set(pipeline.CPU_PARTS)
        assert min(cpu.values()) >= 0 and cpu["exec pool"] > 0 and cpu["index worker"] > 0
