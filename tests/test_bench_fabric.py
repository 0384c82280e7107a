from __future__ import annotations

import os

import pytest

from bench import fabric
from config import get_settings


@pytest.mark.slow
def test_fabric_benchmark_smoke() -> None:
    before = os.environ["REDIS_URL"]
    results = fabric.run(100)
    assert os.environ["REDIS_URL"] == before  # the benchmark's private Redis does not leak into settings
    assert get_settings().redis_url == before
    for rates in results.values():
        assert rates.enqueue > 0
        assert rates.drain > 0
    assert "ratio ours/bare" in fabric.report(results, 100)
