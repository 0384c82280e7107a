"""The request size limit: bodies over ``API_MAX_BODY_BYTES`` answer 413 before they are read whole.

A pure ASGI middleware: a ``Content-Length`` over the limit is refused before the app runs; a body without one
(chunked) is counted as it streams in, and the app is stopped at the first byte over the limit. Whatever the
app would have answered then (FastAPI turns a failed body read into a 400) is replaced by the 413.
"""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body


class BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit."""


def _response(limit: int) -> tuple[Message, Message]:
    body = json.dumps(error_body("PayloadTooLarge", f"request body is larger than {limit} bytes")).encode()
    start: Message = {
        "type": "http.response.start",
        "status": 413,
        # The client may still be sending; closing tells it to stop.
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        state = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:
                return  # the 413 goes out instead of whatever the app answers
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # raised by counting_receive; answered just below
            await self.app(scope, counting_receive, guarded_send)
        if state["exceeded"] and not state["started"]:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        start, body = _response(self.max_bytes)
        await send(start)
        await send(body)
