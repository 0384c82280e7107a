"""The ai step: a clear error without a provider, and a real round trip through the openai client to a local
OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from config import get_settings
from config.settings import Settings
from fabric.errors import InvalidInput
from tests.support.servers import free_port
from tests.workflows.conftest import LocalServer, make_workflow
from workflows import ExecutionStatus, WorkflowEngine, validate_workflow
from workflows.steps.ai import reset_chat_clients

AI_NODES = [
    {"id": "in", "type": "input", "data": {}},
    {
        "id": "ask",
        "type": "ai",
        "data": {
            "system": "You summarise.",
            "prompt": "Summarise: {text}",
            "temperature": 0,
            "max_tokens": 50,
        },
    },
]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    reset_chat_clients()


def settings_with(**update: object) -> Settings:
    return get_settings().model_copy(update=update)


def test_registers_without_a_provider_and_fails_clearly_when_run() -> None:
    workflow = make_workflow(AI_NODES, [("in", "ask")])
    validate_workflow(workflow)  # no provider needed to register
    record = WorkflowEngine(settings=settings_with(openai_api_key=None, openai_base_url=None)).run(
        workflow, {"text": "hello"}
    )
    assert record.status is ExecutionStatus.FAILED
    assert record.failed_step == "ask"
    message = record.error_message or ""
    assert "ConfigurationError" in message
    assert "OPENAI_API_KEY" in message and "OPENAI_BASE_URL" in message


def test_chat_completion_through_a_local_provider(chat_server: LocalServer) -> None:
    settings = settings_with(
        openai_base_url=chat_server.url, openai_api_key=SecretStr("k-test"), chat_model="tiny"
    )
    record = WorkflowEngine(settings=settings).run(
        make_workflow(AI_NODES, [("in", "ask")]), {"text": "the report"}
    )
    assert record.status is ExecutionStatus.COMPLETED, record.error_message
    assert record.output_data["content"] == "echo: Summarise: the report"
    assert record.output_data["model"] == "tiny"
    assert record.output_data["usage"]["total_tokens"] == 8
    request = chat_server.state.requests[0]
    assert request["authorization"] == "Bearer k-test"
    assert request["body"]["messages"][0] == {"role": "system", "content": "You summarise."}
    assert request["body"]["max_tokens"] == 50


def test_provider_refusal_fails_the_step(chat_server: LocalServer) -> None:
    settings = settings_with(openai_base_url=chat_server.url + "/nowhere", openai_api_key=None)
    record = WorkflowEngine(settings=settings).run(make_workflow(AI_NODES, [("in", "ask")]), {"text": "x"})
    assert record.status is ExecutionStatus.FAILED
    assert "StepFailed: chat provider answered 404" in (record.error_message or "")


def test_unreachable_provider_is_transient_and_retried() -> None:
    settings = settings_with(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", openai_api_key=None)
    nodes = [
        AI_NODES[0],
        {**AI_NODES[1], "data": {"prompt": "{text}", "retry": {"max_attempts": 2, "backoff": 0}}},
    ]
    record = WorkflowEngine(settings=settings).run(make_workflow(nodes, [("in", "ask")]), {"text": "x"})
    assert record.status is ExecutionStatus.FAILED
    assert "BackendUnavailable: chat provider: APIConnectionError" in (record.error_message or "")
    assert record.steps[1].attempts == 2


def test_missing_template_field_fails_the_step() -> None:
    settings = settings_with(openai_base_url="http://127.0.0.1:9/v1", openai_api_key=None)
    record = WorkflowEngine(settings=settings).run(make_workflow(AI_NODES, [("in", "ask")]), {"other": 1})
    assert record.status is ExecutionStatus.FAILED
    assert "template field 'text'" in (record.error_message or "")


@pytest.mark.parametrize("bad", ["{text.__class__}", "{0}"])
def test_prompt_templates_are_checked_at_registration(bad: str) -> None:
    nodes = [{"id": "ask", "type": "ai", "data": {"prompt": bad}}]
    with pytest.raises(InvalidInput, match="node 'ask'"):
        validate_workflow(make_workflow(nodes, []))
