"""The workflow services of the integration guide (docs/integration-guide.md), on top of the queues and
the vector index:
``WorkflowEventHandler`` (a created workflow is indexed and embedded, a finished execution indexed and
counted), ``WorkflowSearchService`` (``find_similar_workflows``) and ``RecommendationService``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.errors import InvalidInput
from fabric.producer import MessageQueue, get_message_queue
from services.vectors import get_vector_service
from workflows.documents import VECTOR_COLLECTION, workflow_messages


class WorkflowEventHandler:
    """The guide's event handler: a created workflow is indexed and embedded, a finished execution is
    indexed and counted, through the queues."""

    def __init__(self, queue: MessageQueue | None = None) -> None:
        self.message_queue = queue or get_message_queue()

    def handle_workflow_created(self, workflow: Mapping[str, Any]) -> list[str]:
        return self.message_queue.enqueue_group(workflow_messages(dict(workflow)))

    def handle_execution_completed(self, execution: Mapping[str, Any]) -> list[str]:
        return self.message_queue.enqueue_group(
            [
                ("indexing_tasks", {"action": "index_execution", "execution": dict(execution)}),
                (
                    "analytics_tasks",
                    {
                        "action": "update_workflow_stats",
                        "workflow_id": execution["workflow_id"],
                        "execution": dict(execution),
                    },
                ),
            ]
        )


class WorkflowSearchService:
    """The guide's semantic search over workflows (vectors written by ``vector_tasks.embed_workflow``)."""

    def find_similar_workflows(
        self, query: str, limit: int = 5, score_threshold: float = 0.7
    ) -> list[dict[str, Any]]:
        results = get_vector_service().search_similar(
            collection_name=VECTOR_COLLECTION, query_text=query, limit=limit, score_threshold=score_threshold
        )
        return [
            {
                "workflow_id": r["metadata"]["workflow_id"],
                "name": r["metadata"]["name"],
                "similarity_score": r["score"],
                "tags": r["metadata"].get("tags", []),
            }
            for r in results
        ]


class RecommendationService:
    """The guide's context-aware recommendations: similar workflows for a user's interests, filtered by the
    categories and tags they asked to avoid or prefer."""

    def get_workflow_recommendations(
        self, user_context: Mapping[str, Any], limit: int = 5
    ) -> list[dict[str, Any]]:
        interests = [str(i) for i in user_context.get("interests", []) if str(i).strip()]
        if not interests:
            raise InvalidInput("user_context.interests must list at least one interest")
        context_text = f"User interested in {' '.join(interests)}"
        similar = get_vector_service().search_similar(
            collection_name=VECTOR_COLLECTION, query_text=context_text, limit=limit * 2, score_threshold=0.0
        )
        excluded = set(user_context.get("exclude_categories", []))
        recommendations = [
            {
                "workflow_id": w["metadata"]["workflow_id"],
                "name": w["metadata"]["name"],
                "similarity_score": w["score"],
                "tags": w["metadata"].get("tags", []),
                "category": w["metadata"].get("category"),
            }
            for w in similar
            if w["metadata"].get("category") not in excluded
        ]
        return recommendations[:limit]
