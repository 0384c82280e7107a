"""Through the API with real workers: a workflow registered, executed, found (text, similarity,
recommendations, statistics, logs); a permanently failing message dead-lettered and replayed; readiness."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.api.conftest import ENQUEUE_KEY, ApiServer
from tests.support.servers import wait_until
from tests.support.tasks import runs_key
from tests.support.workers import WorkerProcess
from workflows.samples import load_samples, sample_inputs


def _poll(client: httpx.Client, path: str, done: Any, timeout: float = 60, **params: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        seen["body"] = response.json()
        return bool(done(seen["body"]))

    wait_until(check, timeout=timeout, interval=0.2, what=f"GET {path} {params}")
    return seen["body"]


def test_workflow_registered_executed_and_found(
    own_data_dir: Path, api: httpx.Client, fleet: list[WorkerProcess]
) -> None:
    samples = load_samples()
    for workflow in samples:
        response = api.post("/workflows", json=workflow.model_dump(mode="json"))
        assert response.status_code == 201, response.text
        assert response.json()["workflow_id"] == workflow.id
        assert response.headers["location"] == f"/workflows/{workflow.id}"
    target = samples[0]
    sample = next(s for s in sample_inputs(target.id) if s.expect == "completed")

    assert api.get(f"/workflows/{target.id}").json()["name"] == target.name
    listed = api.get("/workflows").json()
    assert {w["id"] for w in listed["workflows"]} >= {w.id for w in samples}

    queued = api.post(f"/workflows/{target.id}/executions", json={"input_data": sample.input, "priority": 5})
    assert queued.status_code == 202, queued.text
    execution_id = queued.json()["execution_id"]
    assert queued.headers["location"] == f"/executions/{execution_id}"
    # known at once, before any worker recorded it
    assert api.get(f"/executions/{execution_id}").status_code == 200

    record = _poll(api, f"/executions/{execution_id}", lambda b: b["status"] == "completed")
    assert record["workflow_id"] == target.id
    assert record["result"] == record["output_data"]
    assert record["steps"] and all(s["status"] in ("completed", "skipped") for s in record["steps"])

    # found by text, by execution search, by similarity, by interests; logs and statistics follow
    found = _poll(
        api, "/search/workflows", lambda b: any(r["id"] == target.id for r in b["results"]), q=target.name
    )
    assert found["query"] == target.name
    _poll(
        api,
        "/search/executions",
        lambda b: [r["id"] for r in b["results"]] == [execution_id],
        workflow_id=target.id,
        status="completed",
    )
    started = record["started_at"]
    in_window = api.get(
        "/search/executions", params={"workflow_id": target.id, "date_from": started, "date_to": started}
    )
    assert [r["id"] for r in in_window.json()["results"]] == [execution_id]
    before = api.get(
        "/search/executions", params={"workflow_id": target.id, "date_to": "2020-01-01T00:00:00Z"}
    )
    assert before.json()["results"] == []
    bad_date = api.get("/search/executions", params={"date_from": "yesterday"})
    assert bad_date.status_code == 422
    assert "date" in bad_date.json()["error"]["message"]
    logs = _poll(api, f"/executions/{execution_id}/logs", lambda b: b["total"] == len(record["steps"]))
    assert {entry["execution_id"] for entry in logs["logs"]} == {execution_id}
    similar = _poll(api, f"/workflows/{target.id}/similar", lambda b: b["total"] > 0, min_score=0.0)
    assert target.id not in {r["workflow_id"] for r in similar["results"]}
    assert {r["workflow_id"] for r in similar["results"]} <= {w.id for w in samples}
    recommended = _poll(
        api,
        "/recommendations",
        lambda b: target.id in {r["workflow_id"] for r in b["results"]},
        interests=[target.name, *target.tags],
        limit=5,
    )
    assert recommended["interests"][0] == target.name
    stats = _poll(api, f"/workflows/{target.id}/stats", lambda b: b["runs"] == 1)
    assert stats["by_status"]["completed"] == 1

    # the fleet's metrics are served by the API (read scope) and count this run's tasks (each worker
    # process writes its task tally every METRICS_FLUSH_INTERVAL, 0.5 s)
    def counted() -> bool:
        metrics = api.get("/metrics")
        assert metrics.status_code == 200
        assert 'wft_queue_depth{queue="workflow_execution"}' in metrics.text
        return 'outcome="success"' in metrics.text

    wait_until(counted, timeout=10, interval=0.2, what="the run's tasks in /metrics")
    assert httpx.get(f"{api.base_url}".rstrip("/") + "/metrics").status_code == 401

    # a finished execution cannot be cancelled; an unknown one is not found
    assert api.post(f"/executions/{execution_id}/cancel").status_code == 409
    assert api.post("/executions/never-queued/cancel").status_code == 404
    unknown = api.get("/executions/never-queued")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "NotFound"


def test_invalid_workflow_and_unknown_workflow(api: httpx.Client) -> None:
    bad = {
        "name": "broken",
        "definition": {"nodes": [{"id": "first", "type": "no-such-step", "data": {}}], "edges": []},
    }
    response = api.post("/workflows", json=bad)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "InvalidInput"
    assert "first" in error["message"]
    missing = api.post("/workflows/not-registered/executions", json={"input_data": {}})
    assert missing.status_code == 404
    assert "not-registered" in missing.json()["error"]["message"]
    assert api.get("/workflows/not-registered").status_code == 404
    assert api.get("/workflows/not-registered/stats").status_code == 404
    too_urgent = api.post("/workflows/not-registered/executions", json={"input_data": {}, "priority": 10})
    assert too_urgent.status_code == 422


def test_cancel_of_a_delayed_execution(api: httpx.Client, fleet: list[WorkerProcess]) -> None:
    workflow = load_samples()[0]
    assert api.post("/workflows", json=workflow.model_dump(mode="json")).status_code == 201
    sample = sample_inputs(workflow.id)[0]
    queued = api.post(
        f"/workflows/{workflow.id}/executions", json={"input_data": sample.input, "delay_seconds": 3}
    )
    execution_id = queued.json()["execution_id"]
    assert api.get(f"/executions/{execution_id}").json()["status"] == "queued"
    cancel = api.post(f"/executions/{execution_id}/cancel")
    assert cancel.status_code == 202
    _poll(api, f"/executions/{execution_id}", lambda b: b["status"] == "cancelled")


def test_enqueue_dead_letter_and_replay(
    api: httpx.Client, api_server: ApiServer, fleet: list[WorkerProcess], redis_client: redis.Redis
) -> None:
    tag = f"api-{uuid.uuid4().hex[:8]}"
    with api_server.client(key=ENQUEUE_KEY) as producer:
        refused = producer.post("/queues/indexing_tasks/messages", json={"payload": {"action": "nope"}})
        assert refused.status_code == 422
        assert "action" in refused.json()["error"]["message"]
        bad_priority = producer.post(
            "/queues/indexing_tasks/messages",
            json={"payload": {"action": "probe", "tag": tag}, "priority": 42},
        )
        assert bad_priority.status_code == 422
        assert "priority" in bad_priority.json()["error"]["message"]
        unknown_queue = producer.post("/queues/nowhere/messages", json={"payload": {}})
        assert unknown_queue.status_code == 422
        assert "nowhere" in unknown_queue.json()["error"]["message"]
        sent = producer.post(
            "/queues/indexing_tasks/messages",
            json={"payload": {"action": "probe", "tag": tag, "fail": "permanent"}},
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["message_id"]
        # an enqueue-only key may not read the dead letters
        assert producer.get("/dead-letters").status_code == 403

    status = _poll(api, f"/messages/{message_id}", lambda b: b["state"] == "DEAD_LETTERED")
    assert status["error"]["type"] == "InvalidInput"
    dead = _poll(api, "/dead-letters", lambda b: b["total"] == 1, queue="indexing_tasks")
    assert dead["dead_letters"][0]["id"] == message_id
    depths = {q["queue"]: q for q in api.get("/queues").json()["queues"]}
    assert depths["indexing_tasks"]["dead_lettered"] == 1
    assert set(depths) == {
        "workflow_execution",
        "indexing_tasks",
        "vector_tasks",
        "analytics_tasks",
        "dead_letter",
    }

    replay = api.post(f"/dead-letters/{message_id}/replay")
    assert replay.status_code == 202, replay.text
    new_id = replay.json()["message_id"]
    assert new_id != message_id
    # the replayed message reached a worker again (and, failing by design, was dead-lettered again)
    _poll(api, f"/messages/{new_id}", lambda b: b["state"] == "DEAD_LETTERED")
    assert redis_client.llen(runs_key(tag)) == 2
    assert [d["id"] for d in api.get("/dead-letters").json()["dead_letters"]] == [new_id]
    assert api.post(f"/dead-letters/{message_id}/replay").status_code == 404


def test_readiness_reports_every_service(api: httpx.Client, fleet: list[WorkerProcess]) -> None:
    response = api.get("/ready")
    assert response.status_code == 200, response.text
    report = response.json()
    assert set(report["services"]) == {
        "message_queue", "storage", "search", "vector_db", "embeddings", "cache", "workers", "queues",
    }  # fmt: skip
    assert report["overall_status"] == "healthy", report
    assert len(report["services"]["workers"]["workers"]) == len(fleet)
    assert set(report["services"]["queues"]["depths"]) >= {"workflow_execution", "dead_letter"}


def test_bulk_enqueue_route(api: httpx.Client, api_server: ApiServer, fleet: list[WorkerProcess]) -> None:
    def entry(i: int) -> dict[str, object]:
        return {"action": "index_log", "entry": {"id": f"api-bulk-{i}", "timestamp": "2024-06-01T00:00:00Z",
                "level": "INFO", "message": f"bulk route entry {i}", "service": "api-bulk"}}  # fmt: skip

    with api_server.client(key=ENQUEUE_KEY) as producer:
        bad = producer.post("/queues/indexing_tasks/messages/bulk",
                            json={"payloads": [entry(0), {"action": "index_log", "entry": {}}]})  # fmt: skip
        assert bad.status_code == 422
        assert "payloads[1]" in bad.json()["error"]["message"]
        sent = producer.post(
            "/queues/indexing_tasks/messages/bulk", json={"payloads": [entry(i) for i in range(25)]}
        )
        assert sent.status_code == 202, sent.text
        ids = sent.json()["message_ids"]
        assert len(ids) == 25
    for message_id in ids:
        status = _poll(api, f"/messages/{message_id}", lambda b: b["state"] == "SUCCESS")
        assert status["queue"] == "indexing_tasks"
