"""The demo ``wft run`` ends with: register the sample workflows, execute them through the whole pipeline,
and print what happened (executions by status, a text search, a similarity search, statistics)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from config.queues import QUEUES
from fabric.producer import MessageQueue
from services.analytics import get_workflow_stats
from services.search import get_search_service
from workflows.guide import WorkflowSearchService
from workflows.model import ExecutionRecord
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository
from workflows.samples import load_samples, sample_inputs


class DemoFailed(RuntimeError):
    """The demo did not finish: the message says what is missing and where to look."""


def _wait(what: str, done: Callable[[], tuple[int, int]], out: TextIO, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        finished, total = done()
        if (finished, total) != last:
            out.write(f"\r  {what}: {finished}/{total}")
            out.flush()
            last = (finished, total)
        if finished >= total:
            out.write("\n")
            return
        if time.monotonic() > deadline:
            out.write("\n")
            raise DemoFailed(f"{what}: only {finished} of {total} after {timeout:.0f}s; see the worker log")
        time.sleep(0.2)


def run_demo(queue: MessageQueue, out: TextIO, timeout: float = 180.0) -> dict[str, Any]:
    """Run the demo against running workers; returns a summary (also printed to ``out``)."""
    pipelines = Pipelines(queue=queue)
    repo = WorkflowRepository()
    search = get_search_service()
    samples = load_samples()

    out.write(f"==> registering {len(samples)} sample workflows (stored, then indexed and embedded)\n")
    for workflow in samples:
        pipelines.register_workflow(workflow)

    def indexed() -> tuple[int, int]:
        found = sum(
            1 for w in samples if any(r["id"] == w.id for r in search.search_workflows(w.name, limit=10))
        )
        return found, len(samples)

    _wait("searchable", indexed, out, timeout)

    out.write("==> executing every sample input through workflow_execution -> indexing + analytics\n")
    executions: list[tuple[str, str, str]] = []
    for workflow in samples:
        for sample in sample_inputs(workflow.id):
            execution_id = pipelines.request_execution(workflow.id, sample.input)
            executions.append((execution_id, workflow.id, sample.expect))

    records: dict[str, ExecutionRecord] = {}

    def finished() -> tuple[int, int]:
        for execution_id, _, _ in executions:
            if execution_id not in records:
                record = repo.get_execution(execution_id)
                if record is not None and record.status.finished:
                    records[execution_id] = record
        return len(records), len(executions)

    _wait("executions finished", finished, out, timeout)

    def counted() -> tuple[int, int]:
        wanted = Counter(workflow_id for _, workflow_id, _ in executions)
        have = sum(min(get_workflow_stats(w)["runs"], n) for w, n in wanted.items())
        return have, len(executions)

    _wait("executions indexed and counted", counted, out, timeout)

    by_status = Counter(r.status.value for r in records.values())
    unexpected = [
        (i, w, e, records[i].status.value) for i, w, e in executions if records[i].status.value != e
    ]
    out.write("\n== Executions by status\n")
    for status, n in sorted(by_status.items()):
        out.write(f"  {status:<10} {n}\n")
    if unexpected:
        out.write(
            f"  ({len(unexpected)} ended differently from the sample's expectation: {unexpected[:3]})\n"
        )

    text_hits = search.search_workflows("inventory restock", limit=3)
    out.write('\n== Text search: "inventory restock"\n')
    for hit in text_hits:
        out.write(f"  {hit['id']:<22} {hit['name']}  (score {hit.get('score', 0):.2f})\n")
    failed_logs = search.search_logs(level="ERROR", limit=3)
    out.write(f"\n== Error logs ({len(failed_logs)} shown)\n")
    for entry in failed_logs:
        out.write(f"  {entry['timestamp']}  {entry['message'][:90]}\n")

    query = "welcome new customers and set up their accounts"
    similar = WorkflowSearchService().find_similar_workflows(query, limit=3, score_threshold=0.0)
    out.write(f'\n== Similar workflows: "{query}"\n')
    for hit in similar:
        out.write(f"  {hit['workflow_id']:<22} similarity {hit['similarity_score']:.2f}\n")

    out.write("\n== Statistics\n")
    out.write(
        f"  {'workflow':<22} {'runs':>4} {'ok':>4} {'failed':>6} {'success':>8} {'p50 ms':>8} {'p95 ms':>8}\n"
    )
    stats = {w.id: get_workflow_stats(w.id) for w in samples}
    for workflow_id, s in stats.items():
        rate = f"{s['success_rate']:.0%}" if s["success_rate"] is not None else "-"
        p50, p95 = s["duration_ms"]["p50"] or 0, s["duration_ms"]["p95"] or 0
        out.write(
            f"  {workflow_id:<22} {s['runs']:>4} {s['by_status']['completed']:>4} "
            f"{s['by_status']['failed']:>6} "
            f"{rate:>8} {p50:>8.1f} {p95:>8.1f}\n"
        )
    depths = {q: queue.queue_stats(q) for q in QUEUES}
    out.write("\n== Queues\n")
    for name, d in depths.items():
        out.write(f"  {name:<20} pending {d['pending']:>5}   dead-lettered {d['dead_lettered']:>4}\n")
    return {
        "workflows": len(samples),
        "executions": len(executions),
        "by_status": dict(by_status),
        "unexpected": unexpected,
        "text_search": [h["id"] for h in text_hits],
        "similar": [h["workflow_id"] for h in similar],
        "stats": stats,
        "queues": depths,
    }
