from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import Settings


def test_redis_url_and_data_dir_are_read_under_their_names(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6390/3")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert s.redis_url == "redis://example.invalid:6390/3"
    assert s.effective_broker_url == s.redis_url
    assert s.effective_result_backend == s.redis_url
    assert s.effective_cache_url == s.redis_url
    assert s.data_dir == (tmp_path / "d").resolve()


def test_defaults_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "REDIS_URL",
        "DATA_DIR",
        "ENVIRONMENT",
        "API_KEYS",
        "FLOWER_PASSWORD",
        "STORAGE_SIGNING_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.data_dir.name == "var"


def test_default_secrets_refused_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEYS", "FLOWER_PASSWORD", "STORAGE_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None)
    message = str(err.value)
    for name in ("STORAGE_SIGNING_KEY", "FLOWER_PASSWORD", "API_KEYS"):
        assert name in message


def test_visibility_timeout_outlasts_time_limit_and_delays() -> None:
    s = Settings(task_time_limit=100, task_soft_time_limit=90, max_delay_seconds=50, retry_backoff_max=70)
    assert s.visibility_timeout > 100 + 70


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(ValidationError, match="TASK_SOFT_TIME_LIMIT"):
        Settings(task_time_limit=10, task_soft_time_limit=10)


def test_readme_configuration_table_is_current() -> None:
    from config import docs

    assert docs.main(["--check"]) == 0, "run `python -m config.docs --write`"
