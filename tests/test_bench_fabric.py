from __future__ import annotations

import os

import pytest

from bench import fabric


@pytest.mark.slow
def test_fabric_benchmark_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", os.environ["REDIS_URL"])  # restored after: the bench points it elsewhere
    try:
        results = fabric.run(100)
    finally:
        from config import reload_settings

        reload_settings()
    for rates in results.values():
        assert rates.enqueue > 0
        assert rates.drain > 0
    assert "ratio ours/bare" in fabric.report(results, 100)
