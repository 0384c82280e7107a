from __future__ import annotations

import os

import pytest

from bench import highvolume


@pytest.mark.slow
def test_highvolume_benchmark_smoke() -> None:
    before = os.environ["REDIS_URL"]
    results = highvolume.run(1_000, 100)
    assert os.environ["REDIS_URL"] == before
    for measure in ("end_to_end", "unordered", "enqueue_many", "bare_drain"):
        assert results[measure] > 0, measure
    text = highvolume.report(results)
    assert "Producer, `enqueue_many`" in text and "Bulk consumer" in text
    assert "enqueue_many" in results["profiles"]["producer"]  # by cumulative time: always at the top
    assert "ncalls" in results["profiles"]["consumer"]
