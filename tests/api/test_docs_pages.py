"""The docs pages as a person sees them: headless Chromium loads ``/docs`` (Swagger UI) and ``/redoc`` from
the running API, with no host but 127.0.0.1 reachable, and finds every operation and schema rendered.
FastAPI's stock page, which loads Swagger UI from a CDN, renders blank under the same conditions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from tests.api.browser import rendered_dom
from tests.api.conftest import ApiServer
from tests.support.servers import free_port, wait_until


def operations(server: ApiServer) -> list[tuple[str, str]]:
    """``(tag, operation id)`` of every operation in the API's document."""
    return [
        (operation["tags"][0], operation["operationId"])
        for item in server.app.openapi()["paths"].values()
        for operation in item.values()
    ]


def test_swagger_ui_lists_every_operation_and_schema_from_the_apps_own_assets(
    api_server: ApiServer, tmp_path: Path
) -> None:
    dom = rendered_dom(f"{api_server.url}/docs", tmp_path)
    assert 'src="/docs-assets/swagger-ui-bundle.js"' in dom
    found = operations(api_server)
    assert len(found) >= 20
    missing = [op for op in found if f'id="operations-{op[0]}-{op[1]}"' not in dom]
    assert not missing, f"operations not rendered: {missing}\n{dom[-2000:]}"
    schemas = api_server.app.openapi()["components"]["schemas"]
    unlisted = [name for name in schemas if f'json-schema-2020-12__title">{name}<' not in dom]
    assert not unlisted, f"schemas not rendered: {unlisted}"


def test_an_operation_opened_by_its_link_shows_its_answers(api_server: ApiServer, tmp_path: Path) -> None:
    dom = rendered_dom(f"{api_server.url}/docs#/executions/cancel_execution", tmp_path)
    for code in ("202", "401", "403", "404", "409", "422", "503"):
        assert f'data-code="{code}"' in dom, code
    assert "the execution has already finished" in dom  # the 409's description on this route


def test_redoc_lists_every_operation(api_server: ApiServer, tmp_path: Path) -> None:
    dom = rendered_dom(f"{api_server.url}/redoc", tmp_path)
    assert 'src="/docs-assets/redoc.standalone.js"' in dom
    missing = [op for op in operations(api_server) if f'id="tag/{op[0]}/operation/{op[1]}"' not in dom]
    assert not missing, f"operations not rendered: {missing}"
    assert "ErrorBody" in dom


@pytest.fixture
def stock_fastapi() -> Iterator[str]:
    """A plain FastAPI app with one route and FastAPI's own docs pages, served on a free port."""
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the stock FastAPI app to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


def test_fastapis_stock_docs_page_renders_blank_here(stock_fastapi: str, tmp_path: Path) -> None:
    # The control: what the checks above would see without the app's own assets.
    dom = rendered_dom(f"{stock_fastapi}/docs", tmp_path)
    assert "cdn.jsdelivr.net" in dom
    assert '<div id="swagger-ui">' in dom
    assert "operations-default-ping" not in dom
    assert "opblock" not in dom
