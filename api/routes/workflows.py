"""Register and read workflows, request their executions, find similar ones, read their statistics."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, Field

from api.auth import READ, WRITE
from api.routes.tracking import mark_sent
from api.schemas import (
    AUTH,
    ExecutionQueued,
    SimilarWorkflow,
    SimilarWorkflows,
    WorkflowDocument,
    WorkflowList,
    WorkflowRegistered,
    WorkflowStats,
    error_responses,
)
from fabric.errors import NotFound
from services.analytics import get_workflow_stats
from workflows.documents import workflow_document
from workflows.guide import WorkflowSearchService
from workflows.model import ID_PATTERN
from workflows.pipelines import Pipelines
from workflows.repository import WorkflowRepository

router = APIRouter(tags=["workflows"])

WorkflowId = Annotated[str, Path(pattern=ID_PATTERN, description="the workflow's id")]

UNKNOWN_WORKFLOW = {404: "no workflow of that id is registered"}


class ExecutionRequest(BaseModel):
    """What ``POST /workflows/{id}/executions`` takes."""

    input_data: dict[str, Any] = Field(default_factory=dict, description="the execution's input (an object)")
    priority: int | None = Field(None, ge=0, le=9, description="0 (default) to 9; higher runs first")
    delay_seconds: float = Field(0, ge=0, description="run no earlier than this many seconds from now")
    ttl_seconds: float | None = Field(
        None, gt=0, description="never run if not started within this many seconds (status: expired)"
    )


@router.post(
    "/workflows",
    dependencies=[WRITE],
    status_code=201,
    responses=error_responses(
        *AUTH, 400, 413, 422, 503, notes={422: "the workflow is invalid (the field or node at fault)"}
    ),
)
def register_workflow(
    response: Response,
    workflow: Annotated[
        dict[str, Any],
        Body(
            description="the workflow: id?, name, description, tags, category, definition {nodes, edges}",
            examples=[
                {
                    "name": "hello",
                    "definition": {
                        "nodes": [
                            {"id": "in", "type": "input", "data": {}},
                            {"id": "out", "type": "output", "data": {}},
                        ],
                        "edges": [{"source": "in", "target": "out"}],
                    },
                }
            ],
        ),
    ],
) -> WorkflowRegistered:
    """Validate and store a workflow, then index and embed it (asynchronously). 201 with its id; 422 naming
    the field or node at fault, with nothing stored."""
    result = WorkflowRegistered.model_validate(Pipelines().register_workflow(workflow))
    response.headers["Location"] = f"/workflows/{result.workflow_id}"
    return result


# Workflows are answered as the queues carry them (workflow_document): an edge's unset branch is left out.
@router.get(
    "/workflows",
    dependencies=[READ],
    response_model_exclude_none=True,
    responses=error_responses(*AUTH, 422, 503),
)
def list_workflows(
    limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0
) -> WorkflowList:
    """Stored workflows, ordered by id."""
    workflows = WorkflowRepository().list_workflows()
    page = workflows[offset : offset + limit]
    return WorkflowList(
        total=len(workflows), workflows=[WorkflowDocument.model_validate(workflow_document(w)) for w in page]
    )


@router.get(
    "/workflows/{workflow_id}",
    dependencies=[READ],
    response_model_exclude_none=True,
    responses=error_responses(*AUTH, 404, 422, 503, notes=UNKNOWN_WORKFLOW),
)
def get_workflow(workflow_id: WorkflowId) -> WorkflowDocument:
    """The stored workflow; 404 when there is none."""
    return WorkflowDocument.model_validate(workflow_document(WorkflowRepository().get_workflow(workflow_id)))


@router.post(
    "/workflows/{workflow_id}/executions",
    dependencies=[WRITE],
    status_code=202,
    responses=error_responses(*AUTH, 400, 404, 413, 422, 503, notes=UNKNOWN_WORKFLOW),
)
def request_execution(
    workflow_id: WorkflowId, response: Response, request: Annotated[ExecutionRequest, Body()]
) -> ExecutionQueued:
    """Queue an execution. 202 with its ``execution_id`` (poll ``GET /executions/{id}``); 404 for an
    unknown workflow; 422 for a bad priority, delay or ttl."""
    # Marked before it is sent, so a client polling at once never sees "unknown".
    execution_id = mark_sent(str(uuid.uuid4()))
    Pipelines().request_execution(
        workflow_id,
        request.input_data,
        priority=request.priority,
        delay_seconds=request.delay_seconds,
        ttl_seconds=request.ttl_seconds,
        execution_id=execution_id,
    )
    response.headers["Location"] = f"/executions/{execution_id}"
    return ExecutionQueued(execution_id=execution_id, workflow_id=workflow_id, status="queued")


@router.get(
    "/workflows/{workflow_id}/similar",
    dependencies=[READ],
    responses=error_responses(*AUTH, 404, 422, 503, notes=UNKNOWN_WORKFLOW),
)
def similar_workflows(
    workflow_id: WorkflowId,
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
    min_score: Annotated[float, Query(ge=0, le=1)] = 0.5,
) -> SimilarWorkflows:
    """Workflows whose meaning is close to this one's (the guide's WorkflowSearchService), itself excluded."""
    workflow = WorkflowRepository().get_workflow(workflow_id)
    found = WorkflowSearchService().find_similar_workflows(
        workflow.searchable_text(), limit=limit + 1, score_threshold=min_score
    )
    results = [SimilarWorkflow.model_validate(r) for r in found if r["workflow_id"] != workflow_id][:limit]
    return SimilarWorkflows(workflow_id=workflow_id, total=len(results), results=results)


@router.get(
    "/workflows/{workflow_id}/stats",
    dependencies=[READ],
    responses=error_responses(*AUTH, 404, 422, 503, notes=UNKNOWN_WORKFLOW),
)
def workflow_stats(workflow_id: WorkflowId) -> WorkflowStats:
    """Runs by status, success rate, duration p50/p95 and the last run; 404 for an unknown workflow."""
    if not WorkflowRepository().workflow_exists(workflow_id):
        raise NotFound(f"workflow {workflow_id!r} not found")
    return WorkflowStats.model_validate(get_workflow_stats(workflow_id))
