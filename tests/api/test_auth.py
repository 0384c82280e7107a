"""Every route but liveness, the docs and the presigned file route needs a key with the route's scope."""

from __future__ import annotations

import re

import httpx
import pytest

from api.app import api_routes
from api.auth import RequireScope, parse_api_keys
from fabric.errors import ConfigurationError
from tests.api.conftest import ADMIN_KEY, ENQUEUE_KEY, READ_KEY, WRITE_KEY, ApiServer

PUBLIC = {("GET", "/health"), ("GET", "/files/{bucket}/{object_name:path}")}
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def _routes(server: ApiServer) -> list[tuple[str, str, str | None]]:
    """(method, concrete path, required scope) of every API route of the app."""
    found = []
    for route in api_routes(server.app):
        path = re.sub(r"\{(\w+)(:\w+)?\}", "x1", route.path)
        found.append((route.method, path, route.scope))
        if (route.method, route.path) not in PUBLIC:
            assert route.scope is not None, f"{route.method} {route.path} has no scope"
    return found


def _assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.json()["error"]["type"] == error_type


def test_every_route_refuses_a_missing_or_wrong_key(api_server: ApiServer) -> None:
    routes = _routes(api_server)
    assert len(routes) >= 20
    documented = {
        (method.upper(), path)
        for path, operations in api_server.app.openapi()["paths"].items()
        for method in operations
    }
    # the OpenAPI schema lists every route the app serves (so the schemathesis fuzz covers them all)
    assert len(documented) == len(routes)
    with api_server.client(key=None) as anonymous:
        for method, path, scope in routes:
            if scope is None:
                continue
            _assert_error(anonymous.request(method, path), 401, "Unauthorized")
            _assert_error(
                anonymous.request(method, path, headers={"X-API-Key": "wrong"}), 401, "Unauthorized"
            )
            wrong_bearer = {"Authorization": "Bearer wrong"}
            _assert_error(anonymous.request(method, path, headers=wrong_bearer), 401, "Unauthorized")
            # a prefix of a real key is no key either
            _assert_error(
                anonymous.request(method, path, headers={"X-API-Key": ADMIN_KEY[:-1]}), 401, "Unauthorized"
            )
        assert anonymous.request("GET", "/health").json() == {"status": "ok"}
        _assert_error(anonymous.get("/metrics"), 401, "Unauthorized")
        for path in DOCS - {"/docs/oauth2-redirect"}:
            assert anonymous.get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        (READ_KEY, {"read"}),
        (WRITE_KEY, {"read", "write"}),
        (ENQUEUE_KEY, {"enqueue"}),
    ],
)
def test_a_key_without_the_scope_is_forbidden(api_server: ApiServer, key: str, allowed: set[str]) -> None:
    refused = 0
    with api_server.client(key=None) as client:
        for method, path, scope in _routes(api_server):
            if scope is None:
                continue
            for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
                response = client.request(method, path, headers=headers)
                if scope in allowed:
                    assert response.status_code not in (401, 403), (method, path, response.text)
                else:
                    _assert_error(response, 403, "Forbidden")
                    assert scope in response.json()["error"]["message"]
                    refused += 1
    assert refused > 0


def test_the_key_is_checked_before_the_body_is_read(api_server: ApiServer) -> None:
    with api_server.client(key=None) as anonymous:
        malformed = anonymous.post(
            "/workflows", content=b"{not json", headers={"content-type": "application/json"}
        )
        _assert_error(malformed, 401, "Unauthorized")
        assert malformed.headers["www-authenticate"].startswith("Bearer")
        garbage = anonymous.post(
            "/upload", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        _assert_error(garbage, 401, "Unauthorized")
        with api_server.client(key=READ_KEY) as reader:
            _assert_error(reader.post("/workflows", content=b"{not json"), 403, "Forbidden")


def test_write_routes_need_write_and_dead_letters_need_admin(api_server: ApiServer) -> None:
    scopes = {(m, p): s for m, p, s in _routes(api_server)}
    assert scopes[("POST", "/upload")] == "write"
    assert scopes[("POST", "/workflows")] == "write"
    assert scopes[("POST", "/workflows/x1/executions")] == "write"
    assert scopes[("POST", "/executions/x1/cancel")] == "write"
    assert scopes[("POST", "/queues/x1/messages")] == "enqueue"
    assert scopes[("GET", "/dead-letters")] == "admin"
    assert scopes[("POST", "/dead-letters/x1/replay")] == "admin"
    assert {s for (m, _), s in scopes.items() if m == "GET"} <= {"read", "admin", None}


def test_api_keys_are_parsed_and_bad_entries_named_without_the_key() -> None:
    keys = parse_api_keys(" a:read+write , b:admin ")
    assert [(k.secret, sorted(k.scopes)) for k in keys] == [(b"a", ["read", "write"]), (b"b", ["admin"])]
    assert keys[1].allows("enqueue") and not keys[0].allows("enqueue")
    for spec, problem in [
        ("secret-one", "entry 1 is not of the form"),
        ("k:read,secret-two:sudo", "entry 2 names unknown scope(s) sudo"),
        ("secret-three:read,secret-three:admin", "entry 2 repeats a key"),
        (" , ", "holds no key"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(problem)) as err:
            parse_api_keys(spec)
        assert "secret" not in str(err.value)
    assert isinstance(RequireScope("read").scope, str)
