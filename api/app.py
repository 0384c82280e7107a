"""The FastAPI application: routers, API-key auth, the body size limit and JSON errors.

from api.app import create_app
app = create_app()          # reads settings; builds no backend client (they are built on first use)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import make_asgi_app
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from api import errors, presign
from api.auth import AuthGate, Scope, parse_api_keys, required_scope
from api.limits import BodySizeLimit
from api.routes import executions, files, health, queues, search, workflows
from api.schemas import BINARY, error_responses
from config import Settings, get_settings
from services import metrics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"

#: Where the docs pages' scripts and styles are served from (the app's own copy, see create_app).
DOCS_ASSETS_PATH = "/docs-assets"

#: Paths that need no API key: liveness, the OpenAPI docs and their assets (everything under
#: DOCS_ASSETS_PATH), and the presigned file route (its signature is its authentication). AuthGate guards only
#: the routes that declare a scope, so these are public by having none.
PUBLIC_PATHS = frozenset(
    {"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", DOCS_ASSETS_PATH}
)

DESCRIPTION = """
The workflow task system over HTTP: the Service Integration Guide's endpoints (`/upload`, `/download`,
`/search/*`, `/health`) plus workflows, executions, the generic enqueue, queue depths and dead letters.

Every route but `/health`, these docs and the presigned file route needs an API key (`X-API-Key: <key>` or
`Authorization: Bearer <key>`) holding the route's scope: `read`, `write`, `enqueue` or `admin`.

Every error is `{"error": {"type": ..., "message": ...}}` (the `ErrorBody` schema); a 422 for a request
that fails validation also lists each problem in `error.details`. A 503 carries `Retry-After`.
"""


class AsgiEndpoint:
    """An ASGI app as a route's endpoint (Starlette calls a plain function endpoint with a Request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class RouteInfo:
    """One operation the app serves: method, full path template and the scope its key needs (None: public)."""

    method: str
    path: str
    scope: Scope | None


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every operation of ``app``'s API routes, included routers walked (tests iterate this so no route is
    forgotten by the auth checks). The docs pages (routes left out of the OpenAPI document) are not listed."""
    found: list[RouteInfo] = []

    def walk(routes: Iterable[BaseRoute], prefix: str) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                if not route.include_in_schema:
                    continue
                scope = required_scope(list(route.dependencies))
                found.extend(RouteInfo(m, prefix + route.path, scope) for m in sorted(route.methods or ()))
                continue
            # FastAPI includes routers lazily: the included router and its prefix sit on the wrapper.
            included = getattr(route, "original_router", None)
            if included is not None:
                context = getattr(route, "include_context", None)
                walk(included.routes, prefix + str(getattr(context, "prefix", "") or ""))

    walk(app.routes, "")
    return found


def presign_prefix(settings: Settings) -> str:
    """The path prefix of ``STORAGE_PUBLIC_URL``, where the local store's presigned URLs point."""
    return urlsplit(settings.storage_public_url).path.rstrip("/")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` (default: the process settings) gives the API keys, the body limit and
    the presigned route's prefix. Raises ConfigurationError when ``API_KEYS`` cannot be parsed."""
    settings = settings or get_settings()
    # fastapi-offline, not swagger-ui-bundle: it ships both Swagger UI and ReDoc (swagger-ui-bundle has no
    # ReDoc) and serves them from the package at /docs and /redoc, so the pages render with no internet
    # (FastAPI's own pages load both from a CDN).
    app = FastAPIOffline(
        title="Workflow task system API",
        version="0.1.0",
        description=DESCRIPTION,
        static_url=DOCS_ASSETS_PATH,
        # Operation ids are the handlers' names (register_workflow, get_execution ...): the function names
        # of a generated client.
        generate_unique_id_function=operation_id,
    )
    app.state.api_keys = parse_api_keys(settings.api_keys.get_secret_value())
    errors.install(app)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(search.router)
    app.include_router(workflows.router)
    app.include_router(executions.router)
    app.include_router(queues.router)
    app.include_router(
        presign.router,
        prefix=presign_prefix(settings),
        default_response_class=Response,  # bytes of any type, not JSON
        responses={
            200: {"content": {"application/octet-stream": BINARY}, "description": "the object's bytes"},
            **error_responses(
                403, 404, 422,
                notes={403: "the signature does not match or the URL has expired", 404: "no such object"},
            ),
        },
    )  # fmt: skip
    # The fleet's Prometheus metrics (services.metrics), behind the read scope: a scraper sends the key as
    # a bearer token. Served at /metrics exactly (a mount would answer /metrics with a redirect).
    metrics_endpoint = AsgiEndpoint(make_asgi_app(registry=metrics.fleet_registry()))
    # Starlette runs a non-function endpoint as an ASGI app, but its hint names request handlers only.
    app.add_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)  # type: ignore[arg-type]
    # The last middleware added runs first: the key is checked, then the size, then the body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(AuthGate, rules=auth_rules(app), keys=app.state.api_keys)
    return app


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operation id of ``route``: its handler's name (unique across the app's routes)."""
    return route.name


def auth_rules(app: FastAPI) -> list[tuple[str, re.Pattern[str], Scope]]:
    """``(method, path regex, scope)`` of every operation of ``app`` that needs a key (for AuthGate)."""
    rules: list[tuple[str, re.Pattern[str], Scope]] = [
        (route.method, compile_path(route.path)[0], route.scope)
        for route in api_routes(app)
        if route.scope is not None
    ]
    rules.append(("GET", compile_path(METRICS_PATH)[0], "read"))
    return rules
