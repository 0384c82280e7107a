"""The http step against a real local server, and its refusal of private destinations."""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest

from config import get_settings
from fabric.errors import InvalidInput
from tests.workflows.conftest import LocalServer, make_workflow
from workflows import ExecutionStatus, WorkflowEngine, execute_workflow, validate_workflow
from workflows.steps.http import address_forbidden, resolve_destination


def http_workflow(url: str, **data: object) -> object:
    return make_workflow(
        [
            {"id": "in", "type": "input", "data": {}},
            {"id": "call", "type": "http", "data": {"url": url, **data}},
        ],
        [("in", "call")],
    )


@pytest.mark.usefixtures("allow_private")
def test_get_returns_status_headers_and_json(api_server: LocalServer) -> None:
    record = execute_workflow(http_workflow(f"{api_server.url}/items", params={"page": "2"}), {})
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    out = record.output_data
    assert out["status_code"] == 200
    assert out["json"]["items"][1]["name"] == "beta"
    assert out["headers"]["content-type"] == "application/json"
    request = api_server.state.requests[0]
    assert request["path"] == "/items?page=2"
    # the request went to the checked address with the original Host header
    assert request["host"] == api_server.url.removeprefix("http://")


@pytest.mark.usefixtures("allow_private")
def test_post_sends_the_step_input(api_server: LocalServer) -> None:
    record = execute_workflow(
        http_workflow(f"{api_server.url}/echo", method="post", send_input=True), {"a": [1]}
    )
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert record.output_data["status_code"] == 201
    assert record.output_data["json"] == {"received": {"a": [1]}}
    assert json.loads(api_server.state.requests[0]["body"]) == {"a": [1]}


@pytest.mark.usefixtures("allow_private")
def test_4xx_fails_at_once_and_5xx_is_retried(api_server: LocalServer) -> None:
    record = execute_workflow(
        http_workflow(f"{api_server.url}/status/404", retry={"max_attempts": 3, "backoff": 0}), {}
    )
    assert record.status is ExecutionStatus.FAILED
    assert "answered 404" in (record.error_message or "")
    assert record.steps[1].attempts == 1

    api_server.state.flaky_failures = 2
    record = execute_workflow(
        http_workflow(f"{api_server.url}/flaky", retry={"max_attempts": 3, "backoff": 0}), {}
    )
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert record.steps[1].attempts == 3
    assert record.output_data["json"] == {"ok": True}


@pytest.mark.usefixtures("allow_private")
def test_request_timeout_is_transient(api_server: LocalServer) -> None:
    record = execute_workflow(http_workflow(f"{api_server.url}/hang", timeout_seconds=0.3), {})
    assert record.status is ExecutionStatus.FAILED
    assert "BackendUnavailable" in (record.error_message or "") or "StepTimeout" in (
        record.error_message or ""
    )


@pytest.mark.usefixtures("allow_private")
def test_response_size_is_capped(api_server: LocalServer) -> None:
    settings = get_settings().model_copy(update={"workflow_http_max_response_bytes": 1024 * 1024})
    record = WorkflowEngine(settings=settings).run(http_workflow(f"{api_server.url}/big"), {})
    assert record.status is ExecutionStatus.FAILED
    assert "larger than 1048576 bytes" in (record.error_message or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://localhost:9000/",
        "http://LOCALHOST./",
        "http://api.localhost/",
    ],
)
def test_private_destinations_are_refused_at_registration(url: str) -> None:
    assert not get_settings().http_allow_private
    with pytest.raises(InvalidInput, match=r"node 'call' \(http\).*(private|loopback)"):
        validate_workflow(http_workflow(url))


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "http://user:pw@example.com/"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="node 'call'"):
        validate_workflow(http_workflow(url))


def test_private_destinations_are_refused_at_run_time(api_server: LocalServer, allow_private: None) -> None:
    # registered while private addresses were allowed, run by an engine whose settings forbid them
    workflow = http_workflow(f"{api_server.url}/items")
    strict = get_settings().model_copy(update={"http_allow_private": False})
    record = WorkflowEngine(settings=strict).run(workflow, {})
    assert record.status is ExecutionStatus.FAILED
    assert "DestinationRefused" in (record.error_message or "")
    assert api_server.state.requests == []


def test_names_are_checked_after_resolution() -> None:
    # this machine's own name resolves to a loopback/private address (as in /etc/hosts of most hosts)
    host = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    assert any(address_forbidden(ipaddress.ip_address(a)) for a in addresses), (
        f"precondition: {host} resolves to {addresses}, expected a private address"
    )
    with pytest.raises(InvalidInput, match="resolves to a private"):
        resolve_destination(host, 80, allow_private=False)
    assert resolve_destination(host, 80, allow_private=True) in addresses


def test_public_addresses_are_allowed() -> None:
    assert not address_forbidden(ipaddress.ip_address("93.184.216.34"))
    assert not address_forbidden(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946"))
    validate_workflow(http_workflow("https://api.example.com/v1/items"))


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1"])
def test_numeric_spellings_of_loopback_pass_registration_but_are_refused_after_resolution(
    host: str, api_server: LocalServer
) -> None:
    port = api_server.url.rsplit(":", 1)[1]
    workflow = http_workflow(f"http://{host}:{port}/items")
    validate_workflow(workflow)  # not a literal IP to the URL parser ...
    record = execute_workflow(workflow, {})
    # ... but the resolver says 127.0.0.1, and that is refused before any connection
    assert record.status is ExecutionStatus.FAILED
    assert "resolves to a private/loopback/reserved address (127.0.0.1)" in (record.error_message or "")
    assert api_server.state.requests == []
