"""Vector benchmark: the embedded engine on 100,000 real embeddings.

    .venv/bin/python -m bench.vectors            # full run (~2-3 minutes), writes bench/results/vectors.md
    .venv/bin/python -m bench.vectors --smoke    # a seconds-long run on 3,000 vectors

Data: generated workflow descriptions ("When an invoice is overdue, sync invoices from Stripe and email the
finance team") embedded by the static offline model (``tokenlearn-static-model``, 64 dimensions; not the
default model, which embeds ~100 texts/s: this benchmark measures the engine, and 100,000 texts through
the default would take most of half an hour; ``bench/embeddings.py`` measures the models). These are real
embeddings with the structure real data has (shared words, templates), not uniform noise, which no ANN
index handles. Queries are other generated descriptions, not in the store.

Figures, each against a baseline measured in the same run:
- bulk store rate of ``store_vectors`` with precomputed vectors (SQLite write only), against one
  ``store_vector`` call per item; and with the texts embedded in the same call;
- recall@10 of the HNSW index against exact search (the ground truth) and query p50, against exact
  (numpy brute force) p50, for several efSearch values;
- ``search_similar`` end to end (embedding the query, filters, building results) p50;
- the one-off cost of a process's first search (loading 100k rows, building HNSW) and of catching up
  with 1,000 rows written after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.embeddings.local import LocalEmbedder
from services.vectors.embedded import EmbeddedVectorService

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "vectors.md"

TRIGGERS = [
    "Every night",
    "Every Monday morning",
    "When a new ticket arrives",
    "When an invoice is overdue",
    "After each deployment",
    "When a customer signs up",
    "On the first of the month",
    "When a form is submitted",
    "Whenever a payment fails",
    "When an employee joins",
    "Hourly",
    "When a pull request is merged",
    "When stock runs low",
    "After a support call ends",
    "When a contract is signed",
    "When a server alert fires",
]
ACTIONS = [
    "send",
    "post",
    "sync",
    "export",
    "archive",
    "summarise",
    "validate",
    "enrich",
    "translate",
    "back up",
    "route",
    "escalate",
    "reconcile",
    "notify about",
    "generate",
    "update",
    "delete",
    "tag",
    "score",
    "forward",
]
OBJECTS = [
    "invoices",
    "support tickets",
    "customer records",
    "sales leads",
    "payroll entries",
    "database snapshots",
    "error logs",
    "shipping orders",
    "marketing emails",
    "survey answers",
    "expense reports",
    "calendar events",
    "inventory counts",
    "security alerts",
    "contracts",
    "product reviews",
    "build artifacts",
    "chat transcripts",
    "timesheets",
    "refund requests",
]
SYSTEMS = [
    "Salesforce",
    "HubSpot",
    "Slack",
    "Jira",
    "Zendesk",
    "Google Sheets",
    "Postgres",
    "S3",
    "Stripe",
    "QuickBooks",
    "Microsoft Teams",
    "Notion",
    "GitHub",
    "Shopify",
    "Mailchimp",
    "BigQuery",
    "SAP",
    "Workday",
    "Trello",
    "Airtable",
]
EXTRAS = [
    "and email the finance team",
    "for the EU region",
    "with a daily digest",
    "if the amount exceeds 1000 euros",
    "and open a follow-up task",
    "using the approval template",
    "for premium customers",
    "and log the result",
    "in Spanish and French",
    "with retries on failure",
    "and alert the on-call engineer",
    "for the last 30 days",
    "",
    "and update the dashboard",
    "for new hires only",
    "and attach a PDF report",
]
PARTS = (TRIGGERS, ACTIONS, OBJECTS, SYSTEMS, EXTRAS)


def workflows(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` distinct generated workflow descriptions with their metadata (system, tags, parity)."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    while len(out) < n:
        for a, b, c, d, e in rng.integers(0, [len(p) for p in PARTS], size=(n, 5)).tolist():
            text = f"{TRIGGERS[a]}, {ACTIONS[b]} {OBJECTS[c]} from {SYSTEMS[d]} {EXTRAS[e]}".strip()
            if text in seen:
                continue
            seen.add(text)
            out.append(
                (text, {"system": SYSTEMS[d], "tags": [ACTIONS[b], OBJECTS[c]], "even": len(out) % 2 == 0})
            )
            if len(out) == n:
                break
    return out


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def run(smoke: bool = False) -> dict[str, Any]:
    n = 3_000 if smoke else 100_000
    n_queries = 20 if smoke else 200
    n_embedded_store = 1_000 if smoke else 20_000
    n_single = 100 if smoke else 1_000
    threshold = 1_000 if smoke else 20_000
    batch = 5_000
    embedder = LocalEmbedder()  # see the module docstring: the engine's figures, on a fast real model
    results: dict[str, Any] = {"n": n, "queries": n_queries, "dimension": embedder.dimension, "smoke": smoke}

    data = workflows(n + n_queries + n_embedded_store + n_single)
    docs = data[:n]
    queries = [text for text, _ in data[n : n + n_queries]]
    extra = data[n + n_queries : n + n_queries + n_embedded_store]
    singles = data[n + n_queries + n_embedded_store :]

    started = time.perf_counter()
    vectors = embedder.embed_array([text for text, _ in docs])
    results["embed_rate"] = n / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        service = EmbeddedVectorService(
            path=Path(tmp) / "vectors.db", embedder=embedder, hnsw_threshold=threshold
        )
        results["hnsw"] = {"m": service.hnsw_m, "ef_construction": service.hnsw_ef_construction}

        # --- bulk store -------------------------------------------------------------------------------
        started = time.perf_counter()
        for start in range(0, n, batch):
            service.store_vectors(
                "bench",
                [
                    {"id": f"w{i}", "text": docs[i][0], "metadata": docs[i][1], "vector": vectors[i]}
                    for i in range(start, min(start + batch, n))
                ],
            )
        results["store_rate"] = n / (time.perf_counter() - started)

        started = time.perf_counter()
        for i, (text, metadata) in enumerate(singles):
            service.store_vector("single", text, metadata, vector_id=f"s{i}")
        results["single_rate"] = len(singles) / (time.perf_counter() - started)

        started = time.perf_counter()
        for start in range(0, len(extra), batch):
            service.store_vectors(
                "embedded_store",
                [
                    {"id": f"e{i}", "text": t, "metadata": m}
                    for i, (t, m) in enumerate(extra[start : start + batch])
                ],
            )
        results["store_embed_rate"] = len(extra) / (time.perf_counter() - started)

        # --- first search in a fresh process: load rows, build HNSW -----------------------------------------
        reader = EmbeddedVectorService(
            path=Path(tmp) / "vectors.db", embedder=embedder, hnsw_threshold=threshold
        )
        started = time.perf_counter()
        reader.search_similar("bench", queries[0], limit=10, score_threshold=0.0)
        results["first_search_s"] = time.perf_counter() - started
        assert reader.wait_for_index("bench"), "HNSW index was not built"
        results["hnsw_ready_s"] = time.perf_counter() - started

        query_vectors = embedder.embed_array(queries)
        exact_times: list[float] = []
        truth: list[list[str]] = []
        for q in query_vectors:
            started = time.perf_counter()
            truth.append(reader.exact_search_vector("bench", q, limit=10))
            exact_times.append(time.perf_counter() - started)
        results["exact_p50_ms"] = p50_ms(exact_times)

        sweep = []
        for ef in (16, 32, 64, 128):
            reader.hnsw_ef_search = ef
            times, hits = [], 0
            for q, expected in zip(query_vectors, truth, strict=True):
                started = time.perf_counter()
                found = reader.search_vector("bench", q, limit=10)
                times.append(time.perf_counter() - started)
                hits += len({i for i, _ in found} & set(expected))
            sweep.append({"ef": ef, "recall": hits / (10 * n_queries), "p50_ms": p50_ms(times)})
        results["sweep"] = sweep
        reader.hnsw_ef_search = service.hnsw_ef_search

        # --- search_similar end to end ---------------------------------------------------------------------
        cases = {
            "no filter": None,
            "filter system=Slack (~5%: exact over candidates)": {"system": "Slack"},
            "filter tags contains 'invoices' (~5%)": {"tags": "invoices"},
            "filter even=true (50%: HNSW over-fetch)": {"even": True},
        }
        end_to_end = {}
        for label, filters in cases.items():
            times = []
            returned = 0
            for text in queries:
                started = time.perf_counter()
                hits_ = reader.search_similar("bench", text, limit=10, score_threshold=0.0, filters=filters)
                times.append(time.perf_counter() - started)
                returned += len(hits_)
            end_to_end[label] = {"p50_ms": p50_ms(times), "mean_results": returned / n_queries}
        results["end_to_end"] = end_to_end

        # --- catching up with rows written after the index was built ------------------------------------
        more = embedder.embed_array([t for t, _ in extra[:1000]])
        service.store_vectors(
            "bench",
            [{"id": f"late{i}", "text": t, "vector": more[i]} for i, (t, _) in enumerate(extra[:1000])],
        )
        started = time.perf_counter()
        reader.search_similar("bench", queries[0], limit=10, score_threshold=0.0)
        results["catch_up_1000_ms"] = (time.perf_counter() - started) * 1000
        results["count"] = reader.count("bench")
        results["load"] = os.getloadavg()[0]
        reader.close()
        service.close()
    return results


def markdown(results: dict[str, Any]) -> str:
    default_ef = next(row for row in results["sweep"] if row["ef"] == 64)
    lines = [
        "# Vector benchmark (embedded engine)",
        "",
        f"{results['n']:,} generated workflow descriptions embedded by tokenlearn-static-model "
        f"({results['dimension']} dimensions; `LOCAL_EMBEDDING_MODEL=static`: the default model embeds ~100 "
        "texts/s, see the embeddings benchmark, which would bound every row that embeds texts); "
        f"{results['queries']} query descriptions not in the store. "
        f"HNSW (faiss) M={results['hnsw']['m']}, efConstruction={results['hnsw']['ef_construction']}. "
        f"One run on a shared 2-core machine (load average {results['load']:.1f} at the end: other work ran "
        "alongside, so rates are conservative).",
        "",
        "## Bulk store",
        "",
        "| how | vectors/s | vs one call per item |",
        "| --- | ---: | ---: |",
        f"| `store_vectors`, precomputed vectors, batches of 5,000 | {results['store_rate']:,.0f} | "
        f"{results['store_rate'] / results['single_rate']:.0f}x |",
        f"| `store_vectors`, texts embedded in the call | {results['store_embed_rate']:,.0f} | "
        f"{results['store_embed_rate'] / results['single_rate']:.0f}x |",
        f"| `store_vector`, one call per item (baseline) | {results['single_rate']:,.0f} | 1x |",
        f"| (embedding alone, one batch) | {results['embed_rate']:,.0f} | |",
        "",
        "## Recall and latency of the approximate index",
        "",
        f"Ground truth: exact search (numpy brute force over all {results['n']:,} vectors), "
        f"p50 {results['exact_p50_ms']:.2f} ms a query.",
        "",
        "| efSearch | recall@10 | p50 ms | speed-up vs exact |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in results["sweep"]:
        lines.append(
            f"| {row['ef']}{' (default)' if row['ef'] == 64 else ''} | {row['recall']:.4f} | "
            f"{row['p50_ms']:.3f} | {results['exact_p50_ms'] / row['p50_ms']:.0f}x |"
        )
    lines += [
        "",
        f"Target recall@10 >= 0.95 at p50 <= 2 ms: default efSearch 64 gives {default_ef['recall']:.4f} at "
        f"{default_ef['p50_ms']:.3f} ms.",
        "",
        "## `search_similar` end to end (embed the query, search, build results), limit 10",
        "",
        "| query | p50 ms | mean results |",
        "| --- | ---: | ---: |",
    ]
    for label, row in results["end_to_end"].items():
        lines.append(f"| {label} | {row['p50_ms']:.3f} | {row['mean_results']:.1f} |")
    lines += [
        "",
        "## One-off costs",
        "",
        f"- First search of a fresh process (reads {results['n']:,} rows from SQLite, starts the HNSW build "
        f"in a thread, answers exactly): {results['first_search_s']:.2f} s; HNSW ready after "
        f"{results['hnsw_ready_s']:.1f} s (searches are exact until then).",
        f"- First search after another writer stored 1,000 more rows (incremental catch-up; new rows are "
        f"searched exactly until 2,048 gather, then added to the graph): "
        f"{results['catch_up_1000_ms']:.1f} ms. Collection count afterwards: {results['count']:,}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on 3,000 vectors")
    args = parser.parse_args()
    results = run(smoke=args.smoke)
    report = markdown(results)
    print(report)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
