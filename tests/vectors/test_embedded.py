"""The embedded engine beyond the contract: persistence, several processes, the HNSW path, tombstones."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from fabric.errors import BackendUnavailable
from services.embeddings.base import Embedder
from services.vectors.base import query_terms
from services.vectors.embedded import EmbeddedVectorService


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Embedding-like vectors: points scattered around a few fixed directions (not uniform noise).

    Every ``seed`` draws other points around the same centres, so queries look like the data.
    """
    centres = np.random.default_rng(12345).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _store_in_child(path: str, prefix: str, count: int, batch: int) -> None:
    service = EmbeddedVectorService(path=Path(path))
    for start in range(0, count, batch):
        service.store_vectors(
            "shared",
            [
                {
                    "id": f"{prefix}-{n}",
                    "text": f"{prefix} workflow {n} syncs invoices",
                    "metadata": {"who": prefix},
                }
                for n in range(start, min(start + batch, count))
            ],
        )


def _replace_in_child(path: str) -> None:
    service = EmbeddedVectorService(path=Path(path))
    service.store_vector("shared", "Rotate TLS certificates before they expire", {"v": 2}, vector_id="wf-1")
    service.delete_vector("shared", "wf-2")


def run_children(*targets: tuple[object, tuple[object, ...]]) -> None:
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=target, args=args) for target, args in targets]  # type: ignore[arg-type]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0


def test_survives_a_restart(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "vectors.db"
    first = EmbeddedVectorService(path=path, embedder=embedder)
    first.store_vector("workflows", "Send invoice reminders", {"tags": ["billing"]}, vector_id="wf-1")
    first.store_vector("workflows", "Back up the database", {"tags": ["ops"]}, vector_id="wf-2")
    first.delete_vector("workflows", "wf-2")
    first.close()
    second = EmbeddedVectorService(path=path, embedder=embedder)
    assert second.count("workflows") == 1
    results = second.search_similar("workflows", "Send invoice reminders", score_threshold=-1)
    assert [(r["id"], r["metadata"]) for r in results] == [("wf-1", {"tags": ["billing"]})]


def test_default_path_is_under_data_dir() -> None:
    from config import get_settings

    assert EmbeddedVectorService().path == get_settings().data_dir / "vectors" / "vectors.db"


def test_search_sees_vectors_stored_and_replaced_by_other_processes(
    tmp_path: Path, embedder: Embedder
) -> None:
    path = tmp_path / "vectors.db"
    reader = EmbeddedVectorService(path=path, embedder=embedder)
    reader.store_vector("shared", "Send invoice reminders", {"v": 1}, vector_id="wf-1")
    reader.store_vector("shared", "Back up the database", {"v": 1}, vector_id="wf-2")
    assert len(reader.search_similar("shared", "invoice", score_threshold=-1)) == 2  # index built here

    run_children((_replace_in_child, (str(path),)))

    results = reader.search_similar(
        "shared", "Rotate TLS certificates before they expire", score_threshold=-1
    )
    assert [(r["id"], r["text"], r["metadata"]) for r in results] == [
        ("wf-1", "Rotate TLS certificates before they expire", {"v": 2})
    ]


def test_several_processes_write_at_once(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "vectors.db"
    reader = EmbeddedVectorService(path=path, embedder=embedder)
    reader.store_vector("shared", "seed workflow", {}, vector_id="seed")
    reader.search_similar("shared", "seed", score_threshold=-1)

    run_children(*[(_store_in_child, (str(path), f"p{n}", 400, 20)) for n in range(3)])

    assert reader.count("shared") == 1 + 3 * 400
    for prefix in ("p0", "p1", "p2"):
        hits = reader.search_similar(
            "shared", "workflow syncs invoices", limit=1000, score_threshold=-1, filters={"who": prefix}
        )
        assert len(hits) == 400 and len({h["id"] for h in hits}) == 400


def test_hnsw_path_matches_exact_search_and_honours_tombstones(tmp_path: Path) -> None:
    service = EmbeddedVectorService(path=tmp_path / "v.db", embedder=None, hnsw_threshold=500, hnsw_m=16)
    vectors = clustered(3000)
    service.store_vectors(
        "big",
        [
            {
                "id": f"v{n}",
                "text": f"item {n}",
                "metadata": {"half": n % 2, "tags": [f"t{n % 7}"]},
                "vector": v.tolist(),
            }
            for n, v in enumerate(vectors)
        ],
    )
    queries = clustered(50, seed=1)
    # Until the background build is done, searches are exact (and right).
    assert (
        service.search_vector("big", queries[0], limit=10)[0][0]
        == service.exact_search_vector("big", queries[0])[0]
    )
    assert service.wait_for_index("big", timeout=120)
    hits = 0
    for query in queries:
        approx = [i for i, _ in service.search_vector("big", query, limit=10)]
        exact = service.exact_search_vector("big", query, limit=10)
        hits += len(set(approx) & set(exact))
    assert service._indexes["big"].hnsw is not None
    assert hits / (10 * len(queries)) >= 0.9

    # Replace 300 ids (new vectors) and delete 300: no duplicates, no deleted ids, counts right.
    moved = clustered(300, seed=2)
    service.store_vectors(
        "big", [{"id": f"v{n}", "text": f"moved {n}", "vector": moved[n].tolist()} for n in range(300)]
    )
    for n in range(300, 600):
        assert service.delete_vector("big", f"v{n}")
    assert service.count("big") == 2700
    for query in queries[:10]:
        found = [i for i, _ in service.search_vector("big", query, limit=50)]
        assert len(found) == len(set(found)) == 50
        assert not {f"v{n}" for n in range(300, 600)} & set(found)
    target = service.search_vector("big", moved[5], limit=1)
    assert target[0][0] == "v5" and target[0][1] == pytest.approx(1.0, abs=1e-5)

    # Enough new rows are added to the graph itself (until then they are searched exactly as its tail).
    index = service._indexes["big"]
    before = index.hnsw.ntotal
    late = clustered(2100, seed=4)
    service.store_vectors(
        "big", [{"id": f"late{n}", "text": "late", "vector": v.tolist()} for n, v in enumerate(late)]
    )
    assert service.search_vector("big", late[2000], limit=1)[0][0] == "late2000"
    assert index.hnsw.ntotal == index.size == before + 300 + 2100  # the 300 replaced rows were tail too


def test_filtered_search_on_a_large_collection(tmp_path: Path) -> None:
    service = EmbeddedVectorService(path=tmp_path / "v.db", embedder=None, hnsw_threshold=500, hnsw_m=16)
    vectors = clustered(2000, seed=3)
    service.store_vectors(
        "big",
        [
            {
                "id": f"v{n}",
                "text": f"item {n}",
                "metadata": {"half": n % 2, "tags": [f"t{n % 7}"]},
                "vector": v.tolist(),
            }
            for n, v in enumerate(vectors)
        ],
    )
    assert service.wait_for_index("big", timeout=120)
    index = service._catch_up("big")
    assert index is not None and index.hnsw is not None
    query = vectors[10]
    # 1,000 candidates > threshold: HNSW with over-fetch; 286 candidates: exact over the candidates.
    for filters, allowed in (
        ({"half": 0}, {n for n in range(2000) if n % 2 == 0}),
        ({"tags": "t3"}, {n for n in range(2000) if n % 7 == 3}),
    ):
        terms = query_terms("big", filters)
        slots, scores = service._top(index, query / np.linalg.norm(query), 20, -1.0, terms)
        ids = [index.ids[s] for s in slots]
        assert len(ids) == 20 and all(int(i[1:]) in allowed for i in ids)
        assert scores == sorted(scores, reverse=True)
        exact = sorted(allowed, key=lambda n: -float(vectors[n] @ query))[:20]
        assert len({int(i[1:]) for i in ids} & set(exact)) >= 18


def test_locked_database_is_a_transient_error(tmp_path: Path, embedder: Embedder) -> None:
    import sqlite3

    path = tmp_path / "vectors.db"
    service = EmbeddedVectorService(path=path, embedder=embedder, busy_timeout_ms=100)
    service.store_vector("workflows", "first", {})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable, match="locked"):
            service.store_vector("workflows", "second", {})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    service.store_vector("workflows", "second", {})
    assert service.count("workflows") == 2


def test_health_check_reports_an_unusable_path(tmp_path: Path, embedder: Embedder) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    health = EmbeddedVectorService(path=blocker / "vectors.db", embedder=embedder).health_check()
    assert health["status"] == "unhealthy" and str(blocker) in health["error"]


def test_a_collection_from_before_models_were_recorded_adopts_the_model(
    tmp_path: Path, embedder: Embedder
) -> None:
    import sqlite3

    from services.vectors.base import CollectionInfo, EmbeddingModelMismatch
    from tests.vectors.conftest import RenamedEmbedder

    path = tmp_path / "v.db"
    service = EmbeddedVectorService(path=path, embedder=embedder)
    service.store_vector("legacy", "Send invoice reminders", {}, vector_id="a")
    with sqlite3.connect(path) as conn:  # as an older version left it: no model recorded
        conn.execute("UPDATE collections SET embedder = NULL WHERE name = 'legacy'")
    fresh = EmbeddedVectorService(path=path, embedder=embedder)
    assert fresh.collection_info("legacy") == CollectionInfo(embedder.dimension, None)
    assert fresh.search_similar("legacy", "Send invoice reminders")[0]["id"] == "a"  # dimension alone checked
    fresh.store_vector("legacy", "Back up the database", {}, vector_id="b")
    assert fresh.collection_info("legacy") == CollectionInfo(embedder.dimension, embedder.model_name)
    other = EmbeddedVectorService(path=path, embedder=RenamedEmbedder(embedder, "another-model-v2"))
    with pytest.raises(EmbeddingModelMismatch, match="wft reindex"):
        other.search_similar("legacy", "Send invoice reminders")
