"""The OpenAPI document describes what each route answers: a named schema for every success, the error body
for the errors each route can give, and the two ways to send the key. Real error answers of the running API
(each status the document declares) match the declared schema."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator, ValidationError

from api.app import api_routes
from tests.api.conftest import MAX_BODY_BYTES, READ_KEY, ApiServer
from tests.support.servers import RedisServer

ERROR_REF = "#/components/schemas/ErrorBody"
KEY_SCHEMES = [{"APIKeyHeader": []}, {"HTTPBearer": []}]
#: Operations that look up what their path names, and answer 404 when it does not exist.
LOOKUPS = {
    "get_workflow", "request_execution", "similar_workflows", "workflow_stats", "get_execution",
    "cancel_execution", "download_file", "replay_dead_letter", "storage_presigned_get",
}  # fmt: skip


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def schema_of(response: dict[str, Any]) -> dict[str, Any]:
    (content,) = response["content"].values()
    schema: dict[str, Any] = content["schema"]
    return schema


def conforms(document: dict[str, Any], schema: dict[str, Any], body: object) -> None:
    """Raise jsonschema's ValidationError unless ``body`` is valid by ``schema`` (refs into ``document``)."""
    Draft202012Validator({**schema, "components": document["components"]}).validate(body)


def test_every_answer_is_typed_and_every_error_is_the_error_body(api_server: ApiServer) -> None:
    document = api_server.app.openapi()
    assert not {"HTTPValidationError", "ValidationError"} & set(document["components"]["schemas"])
    schemes = document["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] | {"description": None} == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": None,
    }  # fmt: skip
    assert (schemes["HTTPBearer"]["type"], schemes["HTTPBearer"]["scheme"]) == ("http", "bearer")
    scopes = {(r.method, r.path.replace(":path", "")): r.scope for r in api_routes(api_server.app)}
    ids = set()
    for method, path, operation in operations(document):
        where = f"{method} {path}"
        ids.add(operation["operationId"])
        responses = operation["responses"]
        successes = [status for status in responses if status.startswith("2")]
        assert len(successes) == 1, where
        success = schema_of(responses[successes[0]])
        # a named model (or a choice of them), or bytes: never an untyped object
        refs = [success] if "$ref" in success else success.get("anyOf", [])
        assert refs or success == {"type": "string", "format": "binary"}, (where, success)
        assert all(set(ref) == {"$ref"} for ref in refs), (where, success)

        errors = {status for status in responses if status[0] in "45"}
        for status in errors:
            if (path, status) != ("/ready", "503"):  # /ready's 503 is its report
                assert schema_of(responses[status]) == {"$ref": ERROR_REF}, (where, status)
        if scopes[(method, path)] is None:
            assert "security" not in operation, where
        else:
            assert operation["security"] == KEY_SCHEMES, where
            assert {"401", "403", "503"} <= errors, where
            assert "WWW-Authenticate" in responses["401"]["headers"], where
            if path != "/ready":
                assert "Retry-After" in responses["503"]["headers"], where
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in errors, where
        if "requestBody" in operation:
            assert {"400", "413"} <= errors, where
        assert ("404" in errors) == (operation["operationId"] in LOOKUPS), where
        assert ("409" in errors) == (operation["operationId"] == "cancel_execution"), where
    # operation ids are the handlers' names: what a generated client's functions are called
    assert {"register_workflow", "request_execution", "get_execution", "search_workflows"} <= ids
    assert len(ids) == len(operations(document))


def declared(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    """The schema ``document`` declares for ``status`` of ``method path`` (fails if it declares none)."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not declare {status}"
    return schema_of(responses[str(status)])


@pytest.mark.parametrize(
    ("method", "path", "template", "status", "request_options"),
    [
        # not UTF-8, so not JSON at all (JSON that does not parse is a 422 naming where it broke)
        ("POST", "/workflows", "/workflows", 400,
         {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}),
        ("GET", "/queues", "/queues", 401, {"headers": {"X-API-Key": ""}}),
        ("POST", "/workflows", "/workflows", 403, {"json": {}, "headers": {"X-API-Key": READ_KEY}}),
        ("GET", "/workflows/nope", "/workflows/{workflow_id}", 404, {}),
        ("POST", "/queues/indexing_tasks/messages", "/queues/{queue}/messages", 413,
         {"json": {"payload": {"blob": "x" * MAX_BODY_BYTES}}}),
        # FastAPI's own validation of the request ...
        ("POST", "/workflows/nope/executions", "/workflows/{workflow_id}/executions", 422,
         {"json": {"priority": 10}}),
        # ... and the payload contract checked by the producer
        ("POST", "/queues/indexing_tasks/messages", "/queues/{queue}/messages", 422,
         {"json": {"payload": {"action": "nope"}}}),
    ],
)  # fmt: skip
def test_error_answers_are_the_declared_error_body(
    api_server: ApiServer,
    method: str,
    path: str,
    template: str,
    status: int,
    request_options: dict[str, Any],
) -> None:
    document = api_server.app.openapi()
    with api_server.client() as client:
        response = client.request(method, path, **request_options)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    conforms(document, declared(document, method, template, status), response.json())
    if status == 422 and "priority" in response.text:
        assert response.json()["error"]["details"] == [
            {"location": "body.priority", "message": "Input should be less than or equal to 9"}
        ]


def test_a_stopped_broker_answers_the_declared_503s(api_server: ApiServer, own_broker: RedisServer) -> None:
    document = api_server.app.openapi()
    own_broker.stop()
    with api_server.client() as client:
        depths = client.get("/queues")
        assert depths.status_code == 503, depths.text
        assert int(depths.headers["retry-after"]) > 0
        conforms(document, declared(document, "GET", "/queues", 503), depths.json())
        assert depths.json()["error"]["type"] == "BackendUnavailable"
        ready = client.get("/ready")
        assert ready.status_code == 503, ready.text
        conforms(document, declared(document, "GET", "/ready", 503), ready.json())
        assert ready.json()["overall_status"] == "unhealthy"
    # the schemas are not so loose that anything conforms
    with pytest.raises(ValidationError, match="'error' is a required property"):
        conforms(document, {"$ref": ERROR_REF}, {"detail": "Not Found"})
    assert httpx.get(f"{api_server.url}/health").json() == {"status": "ok"}


def test_every_request_body_example_is_accepted(api_server: ApiServer, api: httpx.Client) -> None:
    # An example in the docs page that the API refuses would mislead the first person to try it.
    document = api_server.app.openapi()
    tried = 0
    for method, path, operation in operations(document):
        content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        examples = [*content.get("schema", {}).get("examples", []), *content.get("examples", {}).values()]
        for example in examples:
            body = example.get("value", example)
            answer = api.request(method, path, json=body)
            assert answer.status_code < 400, (method, path, answer.status_code, answer.text)
            tried += 1
    assert tried >= 1
