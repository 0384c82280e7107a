"""The guide's search endpoints, plus semantic search: similar workflows and recommendations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import READ
from api.schemas import (
    AUTH,
    ExecutionHit,
    ExecutionSearchResults,
    Recommendation,
    Recommendations,
    WorkflowHit,
    WorkflowSearchResults,
    error_responses,
)
from services.search import get_search_service
from workflows.guide import RecommendationService

router = APIRouter(tags=["search"], dependencies=[READ], responses=error_responses(*AUTH, 422, 503))

# Hits are the indexed documents as they are: keys a document does not have are left out, not sent as null.


@router.get("/search/workflows", response_model_exclude_unset=True)
def search_workflows(
    q: Annotated[str, Query(description="words that must all match", max_length=1000)],
    tags: Annotated[list[str], Query(description="only workflows with every one of these tags")] = [],  # noqa: B006 - FastAPI copies query defaults
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> WorkflowSearchResults:
    """Workflows whose name, description or tags match ``q``, best first."""
    results = get_search_service().search_workflows(query=q, tags=tags or None, limit=limit)
    hits = [WorkflowHit.model_validate(r) for r in results]
    return WorkflowSearchResults(query=q, total=len(hits), results=hits)


@router.get("/search/executions", response_model_exclude_unset=True)
def search_executions(
    workflow_id: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    status: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    date_from: Annotated[str | None, Query(description="ISO-8601; executions started at or after")] = None,
    date_to: Annotated[str | None, Query(description="ISO-8601; executions started at or before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ExecutionSearchResults:
    """Executions by workflow, status and start time (either bound may be left out), newest first. 422 for
    a bound that is not an ISO-8601 date-time."""
    date_range = None
    if date_from is not None or date_to is not None:
        date_range = {"from": date_from, "to": date_to}
    results = get_search_service().search_executions(
        workflow_id=workflow_id, status=status, date_range=date_range, limit=limit
    )
    hits = [ExecutionHit.model_validate(r) for r in results]
    return ExecutionSearchResults(total=len(hits), results=hits)


@router.get("/recommendations", response_model_exclude_unset=True)
def recommendations(
    interests: Annotated[list[str], Query(min_length=1, description="what the user is interested in")],
    exclude_categories: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies query defaults
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
) -> Recommendations:
    """Workflows for a user's interests (the guide's RecommendationService), without excluded categories."""
    context = {"interests": interests, "exclude_categories": exclude_categories}
    results = RecommendationService().get_workflow_recommendations(context, limit=limit)
    found = [Recommendation.model_validate(r) for r in results]
    return Recommendations(interests=interests, total=len(found), results=found)
