from __future__ import annotations

import os

import pytest

from bench import highvolume


@pytest.mark.slow
def test_highvolume_benchmark_smoke() -> None:
    before = os.environ["REDIS_URL"]
    results = highvolume.run(1_000, 100)
    assert os.environ["REDIS_URL"] == before
    assert results["end_to_end"] > 0 and results["enqueue_many"] > 0 and results["bare_drain"] > 0
    text = highvolume.report(results)
    assert "enqueue_many" in text and "Profile of the bulk consumer" in text and "ncalls" in text
