"""A real search server for the Elasticsearch adapter: ``osmem-server`` behind a header-rewriting proxy.

``osmem-server`` (PyPI ``osmem-server``) is an in-memory OpenSearch-compatible server. The official
``elasticsearch`` client (8.x/9.x) sends ``application/vnd.elasticsearch+json; compatible-with=N`` (and the
``+x-ndjson`` variant for bulk) as Content-Type and Accept; osmem answers those with 406. The proxy rewrites
them to ``application/json`` / ``application/x-ndjson`` and forwards everything else unchanged. This
workaround lives here, in the tests, never in the adapter.

The client also refuses a server whose responses lack ``X-Elastic-Product: Elasticsearch``. osmem already
sends that header on every response (success and error alike, checked with curl on 0.1.6), so the proxy only
adds it when it is missing, which it never is with 0.1.6.

The proxy can also inject failures (``fail_next``): answer the next N matching requests with a status such
as 429 or 503 before forwarding again, to drive the client's and the bulk helper's retries against a real
server.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ManagedProcess, ServerUnavailable, free_port, port_open, wait_until

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def rewrite_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=9`` -> ``application/json`` (and x-ndjson)."""
    lowered = value.lower()
    if "vnd.elasticsearch+x-ndjson" in lowered:
        return "application/x-ndjson"
    if "vnd.elasticsearch+json" in lowered:
        return "application/json"
    return value


def osmem_binary() -> str:
    try:
        from osmem_server import resolve_binary
    except ImportError as exc:
        raise ServerUnavailable("osmem-server is not installed: `pip install osmem-server`") from exc
    return resolve_binary()


class OsmemProcess(ManagedProcess):
    """``osmem-server`` on a free port of 127.0.0.1 (exits with the test process, holds nothing on disk)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        import os

        self.port = port or free_port()
        argv = [
            osmem_binary(),
            "--addr", f"127.0.0.1:{self.port}",
            "--no-ja",
            "--no-stdin-watch",
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        super().__init__(argv, workdir, f"osmem-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        try:
            wait_until(lambda: port_open(self.port), timeout=15, what=f"osmem-server on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise ServerUnavailable(f"osmem-server did not start: {exc}\n{self.log_tail()}") from exc


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HeaderRewritingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr would drown the test output

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without NODELAY, Nagle holds the body until the client's
        # delayed ACK (40 ms) and every request through the proxy takes 40 ms longer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        # One handler (and one thread) per client connection: its upstream connection ends with it.
        try:
            super().handle()
        finally:
            self.server.drop_upstream()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        body = self._read_body()
        self.server.last_headers = {k.lower(): v for k, v in self.headers.items()}
        injected = self.server.take_fault(self.command, self.path)
        if injected is not None:
            payload = (
                b'{"error":{"type":"injected_fault","reason":"injected by the test proxy"},"status":%d}'
                % (injected)
            )
            self._reply(injected, "Injected", [("Content-Type", "application/json")], payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        for name in list(headers):
            if name.lower() in ("content-type", "accept"):
                headers[name] = rewrite_media_type(headers[name])
        self.server.requests += 1
        conn = self.server.upstream()
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.server.drop_upstream()
            self._reply(
                502, "Bad Gateway", [("Content-Type", "application/json")], b'{"error":"upstream failed"}'
            )
            return
        self._reply(response.status, response.reason, response.getheaders(), data)

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status, reason)
        names = set()
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
                names.add(name.lower())
        if "x-elastic-product" not in names:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward


class HeaderRewritingProxy(ThreadingHTTPServer):
    """A threading HTTP proxy on a free port of 127.0.0.1 in front of ``upstream_port``."""

    daemon_threads = True

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        super().__init__(("127.0.0.1", port or free_port()), _ProxyHandler)
        self.upstream_port = upstream_port
        self.requests = 0
        self.last_headers: dict[str, str] = {}  # of the last request, names lower-cased
        self._local = threading.local()
        self._faults: list[tuple[str, int]] = []
        self._faults_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def upstream(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
            self._local.conn = conn
        return conn

    def drop_upstream(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def fail_next(self, count: int, status: int = 429, path_contains: str = "") -> None:
        """Answer the next ``count`` requests whose path contains ``path_contains`` with ``status``."""
        with self._faults_lock:
            self._faults.extend([(path_contains, status)] * count)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def take_fault(self, method: str, path: str) -> int | None:
        with self._faults_lock:
            for i, (fragment, status) in enumerate(self._faults):
                if fragment in path:
                    del self._faults[i]
                    return status
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="es-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


class OsmemBehindProxy:
    """osmem-server plus the proxy: ``url`` is what the elasticsearch client is given."""

    def __init__(self, workdir: Path) -> None:
        self.server = OsmemProcess(workdir)
        self.proxy: HeaderRewritingProxy | None = None

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def start(self) -> OsmemBehindProxy:
        self.server.start()
        self.proxy = HeaderRewritingProxy(self.server.port)
        self.proxy.start()
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.server.stop()

    def __enter__(self) -> OsmemBehindProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def osmem(session_root: Path) -> Iterator[OsmemBehindProxy]:
    """A session-wide osmem-server behind the header-rewriting proxy (``osmem.url`` for the client)."""
    with OsmemBehindProxy(session_root / "osmem") as server:
        yield server
