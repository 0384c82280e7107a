"""API keys and their scopes.

``API_KEYS`` holds ``key:scope[+scope]`` pairs separated by commas, e.g. ``k1:admin,k2:read+enqueue``.
A request presents its key in ``X-API-Key`` or as ``Authorization: Bearer <key>``. Scopes:

- ``read``: every GET (workflows, executions, logs, search, statistics, statuses, queue depths, downloads);
- ``write``: register workflows, request and cancel executions, upload files;
- ``enqueue``: the generic enqueue to a named queue (for other services);
- ``admin``: everything, including the dead letters (their payloads) and their replay.

No key, or an unknown one, answers 401; a known key without the route's scope answers 403. Keys are compared
with :func:`hmac.compare_digest` against every configured key, and never logged.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, cast, get_args

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from api.errors import error_body
from fabric.errors import ConfigurationError

HTTP_ERROR_TYPES = {401: "Unauthorized", 403: "Forbidden"}

Scope = Literal["read", "write", "enqueue", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ADMIN: Scope = "admin"

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from API_KEYS.")
bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS, as a bearer token.")


@dataclass(frozen=True)
class ApiKey:
    """One configured key (its bytes, for constant-time comparison) and the scopes it grants."""

    secret: bytes
    scopes: frozenset[Scope]
    #: the key's position in API_KEYS, for logs that must not show the key itself
    label: str

    def allows(self, scope: Scope) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


def parse_api_keys(spec: str) -> list[ApiKey]:
    """Parse ``API_KEYS`` (``key:scope+scope,key2:scope``). Returns the keys in order.

    Raises :class:`ConfigurationError` naming the entry (by position, never by its key) that is malformed,
    holds an unknown scope, or repeats a key; and when no key is configured at all.
    """
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, scopes_text = entry.rpartition(":")
        if not sep or not key.strip() or not scopes_text.strip():
            raise ConfigurationError(f"API_KEYS entry {position} is not of the form key:scope[+scope]")
        scopes = {s.strip() for s in scopes_text.split("+") if s.strip()}
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise ConfigurationError(
                f"API_KEYS entry {position} names unknown scope(s) {', '.join(unknown)}; "
                f"expected some of: {', '.join(SCOPES)}"
            )
        secret = key.strip().encode("utf-8")
        if secret in seen:
            raise ConfigurationError(f"API_KEYS entry {position} repeats a key given earlier")
        seen.add(secret)
        keys.append(ApiKey(secret, frozenset(cast("set[Scope]", scopes)), label=f"key#{position}"))
    if not keys:
        raise ConfigurationError("API_KEYS holds no key; set at least one key:scope pair")
    return keys


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The configured key equal to ``presented``, or None. Compares against every key in constant time
    each, so the answer's timing does not tell which key (or how much of one) matched."""
    candidate = presented.encode("utf-8")
    found = None
    for key in keys:
        if hmac.compare_digest(key.secret, candidate):
            found = key
    return found


class RequireScope:
    """A dependency that lets a request through only with a key holding ``scope`` (401/403 otherwise).

    The keys are read from ``request.app.state.api_keys`` (set by :func:`api.app.create_app`). The matched key
    is left in ``request.state.api_key`` for handlers and logs (its label, never the key).
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(
        self,
        request: Request,
        header_key: Annotated[str | None, Security(api_key_header)],
        bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> ApiKey:
        presented = header_key or (bearer_key.credentials if bearer_key is not None else None)
        key = authorize(request.app.state.api_keys, presented, self.scope)
        request.state.api_key = key.label
        return key


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="wft"'}


def authorize(keys: list[ApiKey], presented: str | None, scope: Scope) -> ApiKey:
    """The configured key ``presented`` if it holds ``scope``. Raises HTTPException 401 (no key, or not a
    configured one) or 403 (a key without the scope)."""
    if not presented:
        raise HTTPException(401, "an API key is required (X-API-Key header or Bearer token)", CHALLENGE)
    key = find_key(keys, presented)
    if key is None:
        raise HTTPException(401, "the API key is not valid", CHALLENGE)
    if not key.allows(scope):
        raise HTTPException(403, f"this API key lacks the '{scope}' scope this route requires")
    return key


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``X-API-Key``, else the token of ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class AuthGate:
    """Checks the key of a request before the app reads its body (ASGI middleware).

    FastAPI parses a request's body before it runs the route's dependencies, so without this gate a request
    without a key but with a malformed body would learn 422/400 instead of 401. ``rules`` are
    ``(method, path regex, scope)`` of every protected operation; requests matching none pass through (public
    routes, and unknown paths that answer 404/405). :class:`RequireScope` still checks again in the route.
    """

    def __init__(
        self, app: ASGIApp, rules: list[tuple[str, re.Pattern[str], Scope]], keys: list[ApiKey]
    ) -> None:
        self.app = app
        self.rules = rules
        self.keys = keys

    def _required(self, method: str, path: str) -> Scope | None:
        for rule_method, pattern, scope in self.rules:
            if rule_method == method and pattern.match(path):
                return scope
        return None

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            required = self._required(scope["method"], scope["path"])
            if required is not None:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                try:
                    authorize(self.keys, presented_key(headers), required)
                except HTTPException as exc:
                    body = error_body(HTTP_ERROR_TYPES[exc.status_code], exc.detail)
                    response = JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


READ = Depends(RequireScope("read"))
WRITE = Depends(RequireScope("write"))
ENQUEUE = Depends(RequireScope("enqueue"))
ADMIN_ONLY = Depends(RequireScope("admin"))


def required_scope(dependencies: list[object]) -> Scope | None:
    """The scope a route's ``dependencies`` require (tests iterate the routes with this), or None."""
    for dependency in dependencies:
        call = getattr(dependency, "dependency", None)
        if isinstance(call, RequireScope):
            return call.scope
    return None
