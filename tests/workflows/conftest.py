"""Fixtures for the workflow tests: real local HTTP servers (a JSON API and an OpenAI-compatible chat
endpoint) on free ports, the local object store in a temp dir, and settings switches."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from config import get_settings, reload_settings
from services.storage.local import LocalStorage
from workflows import WorkflowRepository, parse_workflow, reset_engine
from workflows.model import Workflow
from workflows.steps.ai import reset_chat_clients


def make_workflow(
    nodes: list[dict[str, Any]], edges: list[tuple[str, str] | dict[str, Any]], **extra: Any
) -> Workflow:
    """A workflow from compact nodes and edges (``("a", "b")`` or ``{"source", "target", "branch"}``)."""
    return parse_workflow(
        {
            "id": extra.pop("id", "wf-test"),
            "name": extra.pop("name", "test workflow"),
            "definition": {
                "nodes": nodes,
                "edges": [e if isinstance(e, dict) else {"source": e[0], "target": e[1]} for e in edges],
            },
            **extra,
        }
    )


@pytest.fixture(autouse=True)
def _fresh_engine() -> Iterator[None]:
    reset_engine()
    yield
    reset_engine()


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HTTP_ALLOW_PRIVATE=true for this test only (validation reads the process settings)."""
    monkeypatch.setenv("HTTP_ALLOW_PRIVATE", "true")
    reload_settings()
    assert get_settings().http_allow_private
    yield
    monkeypatch.undo()
    reload_settings()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects", "test-signing-key", "http://127.0.0.1:1")


@pytest.fixture
def repo(storage: LocalStorage) -> WorkflowRepository:
    return WorkflowRepository(storage)


@dataclass
class ServerState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaky_failures: int = 0
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class LocalServer:
    url: str
    state: ServerState


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def api_server() -> Iterator[LocalServer]:
    """A small JSON API: /items (GET), /echo (POST echoes the JSON body), /status/<code>, /flaky (503 for
    the first ``state.flaky_failures`` calls), /hang (waits until ``state.release``), /big (2 MB)."""
    state = ServerState()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _record(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(
                {"method": self.command, "path": self.path, "host": self.headers.get("Host"), "body": body}
            )
            return body

        def do_GET(self) -> None:
            self._record()
            if self.path.startswith("/items"):
                self._send(200, {"items": [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}]})
            elif self.path.startswith("/status/"):
                self._send(int(self.path.rsplit("/", 1)[1]), {"error": "as asked"})
            elif self.path == "/flaky":
                if state.flaky_failures > 0:
                    state.flaky_failures -= 1
                    self._send(503, {"error": "try later"})
                else:
                    self._send(200, {"ok": True})
            elif self.path == "/hang":
                state.release.wait(30)
                self._send(200, {"late": True})
            elif self.path == "/big":
                payload = b"x" * (2 * 1024 * 1024)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self._send(404, {"error": "no such path"})

        def do_POST(self) -> None:
            body = self._record()
            self._send(201, {"received": json.loads(body or b"null")})

    server, thread = _serve(Handler)
    host, port = server.server_address[:2]
    yield LocalServer(f"http://{host}:{port}", state)
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def chat_server() -> Iterator[LocalServer]:
    """An OpenAI-compatible chat endpoint: /v1/chat/completions answers ``echo: <last user message>``."""
    state = ServerState()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length))
            state.requests.append(
                {"path": self.path, "body": request, "authorization": self.headers.get("Authorization")}
            )
            if self.path != "/v1/chat/completions":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            user = [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
            body = json.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {user}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server, thread = _serve(Handler)
    host, port = server.server_address[:2]
    yield LocalServer(f"http://{host}:{port}/v1", state)
    reset_chat_clients()
    server.shutdown()
    server.server_close()
    thread.join(5)
