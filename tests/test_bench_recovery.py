from __future__ import annotations

import pytest

from bench import recovery


@pytest.mark.slow
def test_recovery_benchmark_smoke() -> None:
    results = recovery.run(kills=1, lost_after=5, held=4)
    assert [(r.broker, r.held) for r in results] == [("redis", 0), ("redis", 4), ("rabbitmq", 0)]
    for result in results:
        assert len(result.seconds) == 1
        # Not a speed target (the full run measures that): the task did finish on another worker.
        assert 0 < result.worst < 5 + 120
    assert "median s" in recovery.report(results)
