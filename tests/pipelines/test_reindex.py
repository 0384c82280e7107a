"""Rebuilding the derived indexes from the object store, interrupted and resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.producer import MessageQueue
from services.search import get_search_service, reset_search_service
from services.vectors import get_vector_service, reset_vector_service
from tests.support.servers import wait_until
from tests.support.workers import WorkerProcess
from workflows.pipelines import REINDEX_CURSOR, Pipelines
from workflows.repository import WorkflowRepository
from workflows.samples import load_samples, sample_inputs


class Interrupted(Exception):
    pass


def test_reindex_rebuilds_indexes_and_resumes_after_an_interruption(
    own_data_dir: Path, mq: MessageQueue, fleet: list[WorkerProcess], redis_client
) -> None:
    reset_search_service()
    reset_vector_service()
    pipelines = Pipelines(queue=mq)
    samples = load_samples()
    for workflow in samples:
        pipelines.register_workflow(workflow)
    ids = [pipelines.request_execution(w.id, s.input) for w in samples for s in sample_inputs(w.id)[:1]]
    repo = WorkflowRepository()
    wait_until(lambda: all(repo.get_execution(i) and repo.get_execution(i).status.finished for i in ids),  # type: ignore[union-attr]
               timeout=120, what="executions to finish")  # fmt: skip
    search, vectors = get_search_service(), get_vector_service()

    def indexed_executions() -> set[str]:
        return {e["id"] for w in samples for e in search.search_executions(workflow_id=w.id, limit=100)}

    def indexed_workflows() -> set[str]:
        return {w.id for w in samples if any(r["id"] == w.id for r in search.search_workflows(w.name))}

    wait_until(lambda: set(ids) <= indexed_executions(), timeout=60, what="executions indexed")

    # The derived indexes are lost.
    for workflow_id in repo.list_workflow_ids():
        search.delete_workflow(workflow_id)
    for execution_id in repo.list_execution_ids():
        search.delete_execution(execution_id)
    vectors.delete_collection("workflows")
    assert indexed_workflows() == set()
    assert indexed_executions() == set()
    stored_workflows = len(repo.list_workflow_ids())
    finished = [i for i in repo.list_execution_ids() if repo.get_execution(i).status.finished]  # type: ignore[union-attr]

    seen: list[tuple[str, int, int]] = []

    def stop_after_first_batch(phase: str, done: int, total: int) -> None:
        seen.append((phase, done, total))
        raise Interrupted

    with pytest.raises(Interrupted):
        pipelines.reindex(progress=stop_after_first_batch, batch=2)
    assert redis_client.get(REINDEX_CURSOR) is not None
    progress: list[tuple[str, int, int]] = []
    sent = pipelines.reindex(progress=lambda *p: progress.append(p), batch=2)
    assert seen == [("workflows", 2, stored_workflows)]
    assert sent["workflows"] == stored_workflows - 2  # the first batch was not sent again
    assert sent["executions"] == len(finished)
    assert progress[-1] == ("executions", len(repo.list_execution_ids()), len(repo.list_execution_ids()))
    assert redis_client.get(REINDEX_CURSOR) is None

    wait_until(
        lambda: indexed_workflows() == {w.id for w in samples}, timeout=60, what="workflows re-indexed"
    )
    wait_until(lambda: set(ids) <= indexed_executions(), timeout=60, what="executions re-indexed")
    wait_until(
        lambda: vectors.count("workflows") == stored_workflows, timeout=60, what="workflows re-embedded"
    )
