"""A real worker process embeds workflows into Weaviate: ``vector_tasks.embed_workflow`` through the
adapter and the real ``weaviate-client``, over loopback, into the protocol stand-in (no real Weaviate runs
here); then the guide's ``find_similar_workflows`` finds them from this process."""

from __future__ import annotations

import pytest

from fabric.producer import MessageQueue
from services.embeddings.base import Embedder
from services.vectors import reset_vector_service
from services.vectors.base import CollectionInfo
from services.vectors.weaviate_backend import WeaviateVectorService
from tests.support.fleet import StartWorker, reset_process_clients
from tests.support.servers import wait_until
from tests.support.weaviate_server import WeaviateStandIn
from workflows.documents import VECTOR_COLLECTION, workflow_document
from workflows.guide import WorkflowSearchService
from workflows.samples import load_samples

#: The worker's weaviate-client looks for a newer release of itself at every connect (best effort); a proxy
#: that refuses makes it give up at once instead of reaching out from a test. Loopback is never proxied.
NO_OUTSIDE = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def test_a_worker_embeds_workflows_into_weaviate(
    weaviate_server: WeaviateStandIn,
    monkeypatch: pytest.MonkeyPatch,
    mq: MessageQueue,
    start_worker: StartWorker,
    embedder: Embedder,
) -> None:
    monkeypatch.setenv("VECTOR_BACKEND", "weaviate")  # the worker inherits it, with WEAVIATE_URL / _GRPC_PORT
    reset_process_clients()
    start_worker(["vector_tasks"], env=NO_OUTSIDE)
    samples = load_samples()
    for workflow in samples:
        mq.enqueue("vector_tasks", {"action": "embed_workflow", "workflow": workflow_document(workflow)})
    wait_until(
        lambda: weaviate_server.object_count(VECTOR_COLLECTION) == len(samples),
        timeout=90,
        what="the worker to store every workflow in Weaviate",
    )
    assert weaviate_server.calls["gRPC BatchObjects"] >= 1
    reset_vector_service()
    found = WorkflowSearchService().find_similar_workflows("welcome email for a new client")
    assert found[0]["workflow_id"] == "customer-onboarding"
    assert found[0]["tags"] == ["crm", "onboarding", "email", "customers"]
    # The collection was created by the worker and records the model it embedded with: this process's too.
    service = WeaviateVectorService(embedder=embedder)
    try:
        assert service.collection_info(VECTOR_COLLECTION) == CollectionInfo(
            embedder.dimension, embedder.model_name
        )
    finally:
        service.close()
