"""Search benchmark: bulk against one-call-per-entry indexing of logs, and log query latency at scale.

    .venv/bin/python -m bench.search            # full run, writes bench/results/search.md
    .venv/bin/python -m bench.search --smoke    # a seconds-long run with tiny counts

Embedded (SQLite FTS5), in one run:
1. bulk: 100,000 log entries through ``bulk_index_logs`` (batches of 10,000) into a fresh database;
   baseline: 5,000 entries through ``index_log``, one call (one durable transaction) each, into another fresh
   database. Figures: docs/s of each and the ratio.
2. query latency: p50/p95 of two-word ``search_logs`` queries (newest first, limit 100) at 100,000 entries,
   then after growing the same database to 1,000,000 entries (the growth is timed too).
Elasticsearch adapter against osmem-server (behind the test proxy, loopback): the same bulk against
one-call-per-entry comparison with smaller counts.

Log entries are synthetic but shaped like real ones: Zipf-distributed words (so some words are in a third of
all messages and most are rare), four levels, a few services, execution ids, timestamps mostly in order with
up to two seconds of jitter. Queries mix a frequent pair, a frequent and a rare word, and a filtered query.
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "search.md"

# Frequency ranks matter: "worker" is the 2nd most frequent word (in ~40% of messages), "connection" the
# 4th (~20%), "started" 6th, "timeout" 9th (~9%), "upstream" 20th; "zq17" is rare (~1.4%).
_COMMON = [
    "request",
    "worker",
    "completed",
    "connection",
    "failed",
    "started",
    "retry",
    "user",
    "timeout",
    "step",
    "database",
    "query",
    "cache",
    "miss",
    "hit",
    "sent",
    "received",
    "token",
    "error",
    "upstream",
    "downstream",
    "warning",
    "queue",
    "message",
    "expired",
    "refused",
    "reset",
    "closed",
    "opened",
    "file",
    "uploaded",
    "downloaded",
    "record",
    "updated",
    "created",
    "deleted",
    "finished",
    "workflow",
]
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("connection timeout", {}),
    ("worker started", {}),
    ("upstream zq17", {}),
    ("connection timeout", {"level": "ERROR"}),
]
LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]
SERVICES = ["api", "engine", "indexer", "scheduler", "mailer"]


class LogGenerator:
    """Deterministic synthetic log entries (see the module docstring)."""

    def __init__(self, seed: int = 7, vocabulary: int = 20_000) -> None:
        self.rng = random.Random(seed)
        # Zipf (s=1): the k-th most frequent word is k times rarer than the first.
        self.words = _COMMON + [f"zq{i}" for i in range(vocabulary - len(_COMMON))]
        self.cum = list(itertools.accumulate(1.0 / (k + 1) for k in range(len(self.words))))
        self.start = datetime(2026, 1, 1, tzinfo=UTC)

    def entries(self, count: int, offset: int = 0) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for i in range(offset, offset + count):
            moment = self.start + timedelta(milliseconds=i * 5 + rng.randint(-2000, 2000))
            yield {
                "timestamp": moment.isoformat().replace("+00:00", "Z"),
                "level": rng.choice(LEVELS),
                "message": " ".join(rng.choices(self.words, cum_weights=self.cum, k=rng.randint(6, 12))),
                "service": rng.choice(SERVICES),
                "execution_id": f"ex-{i // 40}",
            }


def _percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000


def _bulk(service: Any, gen: LogGenerator, count: int, offset: int, batch: int) -> float:
    """Index ``count`` entries in batches; returns the seconds spent inside the service only."""
    spent = 0.0
    for start in range(offset, offset + count, batch):
        entries = list(gen.entries(min(batch, offset + count - start), start))
        began = time.perf_counter()
        service.bulk_index_logs(entries)
        spent += time.perf_counter() - began
    return spent


def _singles(service: Any, gen: LogGenerator, count: int, offset: int) -> float:
    entries = list(gen.entries(count, offset))
    began = time.perf_counter()
    for entry in entries:
        service.index_log(entry)
    return time.perf_counter() - began


def _query_latency(service: Any, size: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for query, filters in QUERIES:
        service.search_logs(query=query, **filters)  # warm the page cache once
        samples = []
        matches = 0
        for _ in range(repeats):
            began = time.perf_counter()
            matches = len(service.search_logs(query=query, **filters))
            samples.append(time.perf_counter() - began)
        p50, p95 = _percentiles(samples)
        label = query + "".join(f" +{k}={v}" for k, v in filters.items())
        rows.append({"size": size, "query": label, "p50_ms": p50, "p95_ms": p95, "returned": matches})
    return rows


def run_sqlite(smoke: bool, workdir: Path) -> dict[str, Any]:
    from services.search.sqlite import SqliteSearchService

    bulk_n, single_n, sizes = (
        (2_000, 200, (2_000, 6_000)) if smoke else (100_000, 5_000, (100_000, 1_000_000))
    )
    batch = 1_000 if smoke else 10_000
    repeats = 20 if smoke else 200
    gen = LogGenerator()

    baseline = SqliteSearchService(workdir / "single.db")
    single_s = _singles(baseline, gen, single_n, offset=10_000_000)
    baseline.close()

    service = SqliteSearchService(workdir / "bulk.db")
    bulk_s = _bulk(service, gen, bulk_n, 0, batch)
    result: dict[str, Any] = {
        "bulk_n": bulk_n,
        "single_n": single_n,
        "bulk_rate": bulk_n / bulk_s,
        "single_rate": single_n / single_s,
    }
    result["ratio"] = result["bulk_rate"] / result["single_rate"]
    queries: list[dict[str, Any]] = []
    indexed = bulk_n
    growth: list[dict[str, Any]] = []
    for size in sizes:
        if size > indexed:
            spent = _bulk(service, gen, size - indexed, indexed, batch)
            growth.append({"from": indexed, "to": size, "seconds": spent, "rate": (size - indexed) / spent})
            indexed = size
        assert service.count("logs") == size, "every generated entry is indexed once"
        queries += _query_latency(service, size, repeats)
    service.close()
    result["queries"] = queries
    result["growth"] = growth
    result["db_mb"] = sum(p.stat().st_size for p in workdir.glob("bulk.db*")) / 1e6
    return result


def run_elasticsearch(smoke: bool, workdir: Path) -> dict[str, Any]:
    from services.search.elasticsearch import ElasticsearchSearchService
    from tests.support.opensearch import OsmemBehindProxy

    bulk_n, single_n = (500, 50) if smoke else (20_000, 500)
    gen = LogGenerator(seed=11)
    with OsmemBehindProxy(workdir / "osmem") as server:
        single = ElasticsearchSearchService(server.url, index_prefix="bench-single-")
        single.health_check()
        single_s = _singles(single, gen, single_n, offset=10_000_000)
        single.close()
        service = ElasticsearchSearchService(server.url, index_prefix="bench-bulk-", chunk_size=1_000)
        bulk_s = _bulk(service, gen, bulk_n, 0, 5_000)
        assert service.count("logs") == bulk_n
        queries = _query_latency(service, bulk_n, 10 if smoke else 50)
        service.close()
    result: dict[str, Any] = {
        "bulk_n": bulk_n,
        "single_n": single_n,
        "bulk_rate": bulk_n / bulk_s,
        "single_rate": single_n / single_s,
        "queries": queries,
    }
    result["ratio"] = result["bulk_rate"] / result["single_rate"]
    return result


def run(smoke: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        return {
            "smoke": smoke,
            "sqlite": run_sqlite(smoke, workdir),
            "elasticsearch": run_elasticsearch(smoke, workdir),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Search benchmark" + (" (smoke)" if results["smoke"] else ""),
        "",
        "## Indexing log entries: bulk against one call per entry",
        "",
        "| backend | bulk docs/s | one call per entry docs/s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {"sqlite": "SQLite FTS5 (embedded)", "elasticsearch": "Elasticsearch adapter on osmem (loopback)"}
    for key, name in names.items():
        r = results[key]
        lines.append(
            f"| {name} ({r['bulk_n']:,} bulk / {r['single_n']:,} single) | {r['bulk_rate']:,.0f} | "
            f"{r['single_rate']:,.0f} | {r['ratio']:.1f}x |"
        )
    lines += [
        "",
        "## Log queries (newest first, limit 100)",
        "",
        "| backend | entries | query | p50 ms | p95 ms | returned |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for key, name in names.items():
        for q in results[key]["queries"]:
            lines.append(
                f"| {name} | {q['size']:,} | `{q['query']}` | {q['p50_ms']:.2f} | {q['p95_ms']:.2f} "
                f"| {q['returned']} |"
            )
    sqlite = results["sqlite"]
    lines.append("")
    for g in sqlite["growth"]:
        lines.append(
            f"Growing the embedded index from {g['from']:,} to {g['to']:,} entries took {g['seconds']:.1f} s "
            f"({g['rate']:,.0f} docs/s)."
        )
    lines.append(f"Embedded database on disk at the end: {sqlite['db_mb']:,.0f} MB.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="search benchmark")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny counts")
    args = parser.parse_args(argv)
    results = run(smoke=args.smoke)
    report = markdown(results)
    print(report)
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
