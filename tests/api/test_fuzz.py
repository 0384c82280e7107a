"""A property-based fuzz of the API from its own OpenAPI schema (schemathesis): whatever the input, valid by
the schema or not, no operation answers 5xx, and every answer is one the document declares for that operation
(its status, content type and body schema: what a generated client parses). The app runs in process (ASGI)
against the session Redis and the embedded backends; the number of examples per operation is bounded to keep
the run short."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from fabric.producer import MessageQueue
from tests.api.conftest import ADMIN_KEY

# Built at collection: tests/conftest.py has pointed the settings at the session servers by then, and
# create_app opens no connection (services are built on first use).
# /ready takes no input and waits out a worker ping on every call; tests/api/test_health.py covers it.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(path="/ready")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_input_makes_a_server_error_or_an_undocumented_answer(
    case: schemathesis.Case, mq: MessageQueue
) -> None:
    response = case.call(headers={"X-API-Key": ADMIN_KEY})
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
    if not case.path.startswith("/files/"):  # the presigned route answers 403 to a bad signature
        # the key is accepted everywhere: the fuzz reaches the handlers, not just the auth check
        assert response.status_code not in (401, 403), (case.method, case.formatted_path, response.text)
