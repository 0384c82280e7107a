"""The offline static model (``LOCAL_EMBEDDING_MODEL=static``), and the cached factory that chooses a
backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from config import reload_settings
from fabric.errors import ConfigurationError, InvalidInput
from services.embeddings import Embedder, get_embedder, reset_embedder
from services.embeddings.local import MODEL_NAME, LocalEmbedder
from services.embeddings.openai_backend import OpenAIEmbedder


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


def test_rows_are_unit_float32_of_the_model_dimension(local: LocalEmbedder) -> None:
    texts = ["Send invoice reminders to customers", "Onboard a new employee", "x" * 100_000]
    vectors = local.embed_array(texts)
    assert isinstance(local, Embedder)
    assert local.model_name == MODEL_NAME
    assert local.dimension == 64
    assert vectors.shape == (3, 64)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    as_lists = local.embed(texts)
    assert len(as_lists) == 3
    assert all(isinstance(value, float) for value in as_lists[0])
    np.testing.assert_allclose(np.array(as_lists, dtype=np.float32), vectors)


def test_batch_equals_one_at_a_time_and_is_deterministic(local: LocalEmbedder) -> None:
    texts = [f"Sync contact {i} from the CRM to the mailing list" for i in range(10)] + ["Nightly ETL"]
    batch = local.embed_array(texts)
    singles = np.vstack([local.embed_array([text]) for text in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    np.testing.assert_allclose(local.embed_array(texts), batch)


def test_more_texts_than_one_chunk_keep_their_order(local: LocalEmbedder) -> None:
    texts = [f"ticket {i} escalated to on-call" for i in range(9000)]  # > 2 chunks of 4096
    vectors = local.embed_array(texts)
    assert vectors.shape == (9000, 64)
    for index in (0, 4095, 4096, 8191, 8999):
        np.testing.assert_allclose(vectors[index], local.embed_array([texts[index]])[0], atol=1e-6)


def test_similar_texts_score_higher_than_unrelated(local: LocalEmbedder) -> None:
    query, near, far = local.embed_array(
        [
            "email customers whose invoices are overdue",
            "Send payment reminder emails for unpaid invoices",
            "Resize uploaded product photos and store thumbnails",
        ]
    )
    assert float(query @ near) > float(query @ far)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_blank_text_is_refused_with_its_index(local: LocalEmbedder, bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"empty or whitespace only \(indices \[1\]\)"):
        local.embed_array(["fine", bad, "also fine"])


def test_bare_string_and_non_strings_are_refused(local: LocalEmbedder) -> None:
    with pytest.raises(InvalidInput, match="not a single string"):
        local.embed_array("send an invoice")
    with pytest.raises(InvalidInput, match=r"indices \[1\]"):
        local.embed_array(["ok", 3])  # type: ignore[list-item]


def test_no_texts_give_an_empty_matrix_of_the_right_width(local: LocalEmbedder) -> None:
    assert local.embed_array([]).shape == (0, 64)
    assert local.embed([]) == []


def test_health_check_reports_model_and_dimension(local: LocalEmbedder) -> None:
    assert local.health_check() == {
        "status": "healthy",
        "backend": "local",
        "model": MODEL_NAME,
        "dimension": 64,
    }


def test_loads_and_embeds_with_the_network_forbidden() -> None:
    """In a fresh interpreter where every socket connect and DNS lookup raises, the model still loads."""
    script = textwrap.dedent(
        """
        import socket

        def forbidden(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args!r}")

        socket.socket.connect = forbidden
        socket.socket.connect_ex = forbidden
        socket.create_connection = forbidden
        socket.getaddrinfo = forbidden

        from services.embeddings.local import LocalEmbedder

        vectors = LocalEmbedder().embed_array(["offline invoice workflow", "second text"])
        print(vectors.shape)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 64)"


def test_factory_defaults_to_local_minilm_and_caches(fresh_settings: pytest.MonkeyPatch) -> None:
    from services.embeddings.onnx import MINILM_L3, MINILM_L6, OnnxEmbedder

    fresh_settings.delenv("EMBEDDINGS", raising=False)
    fresh_settings.delenv("LOCAL_EMBEDDING_MODEL", raising=False)
    reload_settings()
    first = get_embedder()
    assert isinstance(first, OnnxEmbedder) and first.model is MINILM_L6
    assert get_embedder() is first
    reset_embedder()
    assert get_embedder() is not first
    for key, expected in (("static", LocalEmbedder), ("minilm-l3", OnnxEmbedder)):
        fresh_settings.setenv("LOCAL_EMBEDDING_MODEL", key)
        reload_settings()
        reset_embedder()
        assert isinstance(get_embedder(), expected)
    assert isinstance(chosen := get_embedder(), OnnxEmbedder) and chosen.model is MINILM_L3


def test_factory_builds_openai_from_settings(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("EMBEDDINGS", "openai")
    fresh_settings.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    fresh_settings.setenv("EMBEDDING_MODEL", "e5-small")
    fresh_settings.setenv("EMBEDDING_DIMENSIONS", "384")
    reload_settings()
    embedder = get_embedder()
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.model_name == "e5-small"
    assert embedder.dimension == 384  # configured: known without a request


def test_factory_refuses_openai_without_key_or_base_url(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("EMBEDDINGS", "openai")
    fresh_settings.delenv("OPENAI_BASE_URL", raising=False)
    fresh_settings.delenv("OPENAI_API_KEY", raising=False)
    reload_settings()
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        get_embedder()


def test_a_forked_child_builds_its_own_embedder(fresh_settings: pytest.MonkeyPatch) -> None:
    reload_settings()
    parent = get_embedder()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got the parent's instance, then leave without pytest's cleanup
        try:
            child = get_embedder()
            os.write(write, b"same" if child is parent else b"own")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"own"
    assert get_embedder() is parent


def test_threads_sharing_one_embedder_get_the_serial_answers(local: LocalEmbedder) -> None:
    texts = [f"route ticket {i} to the billing queue" for i in range(200)]
    serial = local.embed_array(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = np.vstack(list(pool.map(lambda text: local.embed_array([text]), texts)))
    np.testing.assert_allclose(parallel, serial, atol=1e-6)
