"""Round trips of definitions, execution records and artifacts through the local object store."""

from __future__ import annotations

import json

import pytest

from fabric.errors import InvalidInput, NotFound
from services.storage.local import LocalStorage
from tests.workflows.conftest import make_workflow
from workflows import ExecutionStatus, WorkflowRepository, execute_workflow
from workflows.repository import ARTIFACTS_BUCKET, WORKFLOWS_BUCKET
from workflows.samples import load_samples

NODES = [
    {"id": "in", "type": "input", "data": {}},
    {"id": "up", "type": "process", "data": {"operation": "uppercase", "field": "name"}},
]


def test_workflow_round_trip(repo: WorkflowRepository, storage: LocalStorage) -> None:
    workflow = make_workflow(NODES, [("in", "up")], id="greeter", tags=["demo"], description="says hi")
    saved = repo.save_workflow(workflow)
    assert saved == workflow
    assert storage.exists(WORKFLOWS_BUCKET, "workflows/greeter.json")
    assert json.loads(storage.download_file(WORKFLOWS_BUCKET, "workflows/greeter.json"))["tags"] == ["demo"]
    assert repo.get_workflow("greeter") == workflow
    # saving again is idempotent
    repo.save_workflow(workflow)
    assert [w.id for w in repo.list_workflows()] == ["greeter"]
    assert repo.delete_workflow("greeter") is True
    assert repo.delete_workflow("greeter") is False
    with pytest.raises(NotFound, match="workflow 'greeter' not found"):
        repo.get_workflow("greeter")


def test_save_workflow_accepts_dicts_and_refuses_bad_ones(repo: WorkflowRepository) -> None:
    saved = repo.save_workflow({"id": "d1", "name": "from dict", "definition": {"nodes": NODES}})
    assert saved.id == "d1"
    with pytest.raises(InvalidInput, match="node 'x'"):
        repo.save_workflow(
            {"id": "d2", "name": "bad", "definition": {"nodes": [{"id": "x", "type": "nope"}]}}
        )
    assert [w.id for w in repo.list_workflows()] == ["d1"]


def test_ids_that_could_escape_are_refused(repo: WorkflowRepository) -> None:
    with pytest.raises(InvalidInput):
        repo.get_workflow("../secrets")
    with pytest.raises(InvalidInput):
        repo.get_execution("a/b")


def test_execution_round_trip_and_listing(repo: WorkflowRepository, storage: LocalStorage) -> None:
    one = make_workflow(NODES, [("in", "up")], id="one")
    two = make_workflow(NODES, [("in", "up")], id="two")
    assert repo.get_execution("e-1") is None
    records = [
        execute_workflow(one, {"name": "a"}, execution_id="e-1"),
        execute_workflow(one, {"name": 5}, execution_id="e-2"),  # fails: uppercase needs a string
        execute_workflow(two, {"name": "c"}, execution_id="e-3"),
    ]
    for record in records:
        assert repo.save_execution(record) == f"executions/{record.execution_id}/result.json"
    assert storage.exists(ARTIFACTS_BUCKET, "executions/e-1/result.json")
    loaded = repo.get_execution("e-2")
    assert loaded == records[1]
    assert loaded is not None and loaded.status is ExecutionStatus.FAILED
    assert [r.execution_id for r in repo.list_executions()] == ["e-1", "e-2", "e-3"]
    assert [r.execution_id for r in repo.list_executions(workflow_id="one")] == ["e-1", "e-2"]
    assert [r.execution_id for r in repo.list_executions(workflow_id="two")] == ["e-3"]
    assert repo.list_executions(workflow_id="none") == []
    # idempotent: saving the same record again leaves one record
    repo.save_execution(records[0])
    assert len(repo.list_executions(workflow_id="one")) == 2
    # one object per record: no listing marker
    assert storage.list_files(ARTIFACTS_BUCKET, "by-workflow/") == []


def test_a_marker_an_earlier_version_wrote_goes_with_its_execution(
    repo: WorkflowRepository, storage: LocalStorage
) -> None:
    workflow = make_workflow(NODES, [("in", "up")], id="old")
    repo.save_execution(execute_workflow(workflow, {"name": "a"}, execution_id="e-old"))
    storage.upload_file(ARTIFACTS_BUCKET, "by-workflow/old/e-old", b"", "application/octet-stream")
    assert [r.execution_id for r in repo.list_executions(workflow_id="old")] == ["e-old"]
    assert repo.delete_execution("e-old")
    assert storage.list_files(ARTIFACTS_BUCKET) == []


def test_artifacts(repo: WorkflowRepository) -> None:
    record = execute_workflow(
        make_workflow(NODES, [("in", "up")], id="one"), {"name": "a"}, execution_id="e-9"
    )
    repo.save_execution(record)
    assert repo.save_artifact("e-9", "report.csv", "a,b\n1,2\n", "text/csv") == "executions/e-9/report.csv"
    repo.save_artifact("e-9", "blob.bin", b"\x00\x01")
    assert repo.list_artifacts("e-9") == ["blob.bin", "report.csv"]
    assert repo.get_artifact("e-9", "report.csv") == b"a,b\n1,2\n"
    for bad in ("result.json", "../x", "a/b", ""):
        with pytest.raises(InvalidInput):
            repo.save_artifact("e-9", bad, b"x")
    assert repo.delete_execution("e-9") is True
    assert repo.get_execution("e-9") is None
    assert repo.list_artifacts("e-9") == []
    assert repo.list_executions(workflow_id="one") == []
    assert repo.delete_execution("e-9") is False


def test_default_storage_comes_from_settings() -> None:
    from services.storage import get_storage_service, reset_storage_service

    reset_storage_service()
    try:
        repo = WorkflowRepository()
        assert repo.storage is get_storage_service()
    finally:
        reset_storage_service()


def test_samples_register(repo: WorkflowRepository) -> None:
    samples = load_samples()
    assert len(samples) >= 5
    for workflow in samples:
        repo.save_workflow(workflow)
    assert [w.id for w in repo.list_workflows()] == sorted(w.id for w in samples)
