"""The offline pieces of the OpenAI adapter: token estimates, truncation, request packing, Retry-After."""

from __future__ import annotations

import email.utils
import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from services.embeddings.openai_backend import (
    _retry_after_seconds,
    estimate_tokens,
    pack_batches,
    truncate_to_tokens,
)


def test_estimates_are_at_or_above_typical_bpe_counts() -> None:
    # cl100k counts: "Send the monthly invoice to every customer" is 8 tokens, a CJK char 1-2, an emoji 1-3
    assert estimate_tokens("Send the monthly invoice to every customer") >= 8
    assert estimate_tokens("") == 0
    assert estimate_tokens("请发送发票") == 10
    assert estimate_tokens("🙂") == 3
    assert estimate_tokens("café") == 2  # 3 ASCII chars (1 token) + é (1)


@given(st.text(max_size=300), st.integers(min_value=0, max_value=60))
def test_truncation_is_the_longest_prefix_that_fits(text: str, limit: int) -> None:
    cut = truncate_to_tokens(text, limit)
    assert text.startswith(cut)
    assert estimate_tokens(cut) <= limit or cut == ""
    if cut != text:
        assert estimate_tokens(text[: len(cut) + 1]) > limit


@given(
    st.lists(st.integers(min_value=1, max_value=50), max_size=200),
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=50, max_value=300),
)
def test_packing_covers_every_text_in_order_within_the_limits(
    counts: list[int], max_inputs: int, max_tokens: int
) -> None:
    ranges = list(pack_batches(counts, max_inputs, max_tokens))
    assert [index for start, stop in ranges for index in range(start, stop)] == list(range(len(counts)))
    for start, stop in ranges:
        assert 0 < stop - start <= max_inputs
        assert sum(counts[start:stop]) <= max_tokens
    for (start, stop), (next_start, _) in itertools.pairwise(ranges):
        # greedy: the next batch's first text did not fit into this one
        assert stop - start == max_inputs or sum(counts[start:stop]) + counts[next_start] > max_tokens


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class _Error(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("status error")
        self.response = _Response(headers)


def test_retry_after_forms() -> None:
    assert _retry_after_seconds(_Error({"retry-after": "7"})) == 7.0
    assert _retry_after_seconds(_Error({"retry-after-ms": "1500", "retry-after": "7"})) == 1.5
    assert _retry_after_seconds(_Error({})) is None
    assert _retry_after_seconds(_Error({"retry-after": "soon"})) is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (_retry_after_seconds(_Error({"retry-after": in_ten})) or 0.0) <= 10.0
    assert _retry_after_seconds(ValueError("no response")) is None
