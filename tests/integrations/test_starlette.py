"""What only the Starlette integration does: the middleware's route table and what it does with
requests outside it, path parameters, and mistakes refused when the app is built.

The behaviour common to every integration (200, 401, 403, 503, revocation, modes) is in
test_http.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from keysvc_client import Guard, aio
from keysvc_client.integrations.starlette import KeysvcMiddleware, authorized_key, requires
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.e2e.harness import ServerProcess

from .conftest import TIMEOUT, Keys

pytestmark = pytest.mark.slow


async def echo(request: Request) -> JSONResponse:
    """Whatever a route needs to show: its path parameters and the key it was given."""
    key = getattr(request.state, "keysvc_key", None)
    return JSONResponse({"params": request.path_params, "key_id": key.key_id if key else None})


async def unprotected(request: Request) -> PlainTextResponse:
    try:
        authorized_key(request)
    except LookupError as err:
        return PlainTextResponse(str(err))
    return PlainTextResponse("checked")


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("in")
    await websocket.close()


def table_app(target: str, routes: Mapping[str, Any], **options: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/api/v1/links", echo, methods=["GET", "POST", "DELETE"]),
            Route("/api/v1/links/{link_id}", echo, methods=["GET"]),
            Route("/api/v1/forgotten", echo),
            Route("/status", unprotected),
            Route("/internal/links", echo),
            WebSocketRoute("/api/v1/stream", socket),
        ],
        middleware=[
            Middleware(
                KeysvcMiddleware,
                guard=aio.Guard(target, timeout=TIMEOUT),
                routes=routes,
                **options,
            )
        ],
    )


ROUTES = {
    "GET /api/v1/links": "links:read",
    "POST /api/v1/links": ["links:write"],
    "GET /api/v1/links/{link_id}": ["links:read"],
    "GET /internal/links": ["links:read"],
}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TestClient]:
    with TestClient(table_app(server.target, ROUTES)) as client:
        yield client


def bearer(header: str) -> dict[str, str]:
    return {"Authorization": header}


class TestRouteTable:
    def test_path_parameters_are_matched_and_reach_the_handler(
        self, client: TestClient, keys: Keys
    ) -> None:
        created = keys.new(["links:read"])
        response = client.get("/api/v1/links/plink_123", headers=bearer(created.secret))
        assert response.json() == {"params": {"link_id": "plink_123"}, "key_id": created.key.id}

    def test_an_undeclared_path_under_the_prefix_is_404_before_the_app(
        self, client: TestClient, keys: Keys
    ) -> None:
        """A route added to the app but not to the table is unreachable, never unprotected."""
        for headers in ({}, bearer(keys.bearer(["links:read"]))):
            response = client.get("/api/v1/forgotten", headers=headers)
            assert response.status_code == 404
            assert response.json()["error"]["reason"] == "not_found"

    def test_an_undeclared_method_is_405_naming_the_declared_ones(
        self, client: TestClient, keys: Keys
    ) -> None:
        response = client.delete("/api/v1/links", headers=bearer(keys.bearer(["links:write"])))
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD, POST"

    def test_head_follows_get(self, client: TestClient, keys: Keys) -> None:
        assert client.head("/api/v1/links").status_code == 401
        assert client.head("/api/v1/links", headers=bearer(keys.bearer())).status_code == 200

    def test_a_declared_route_outside_the_prefix_is_protected_too(
        self, client: TestClient, keys: Keys
    ) -> None:
        assert client.get("/internal/links").status_code == 401
        assert client.get("/internal/links", headers=bearer(keys.bearer())).status_code == 200

    def test_other_paths_pass_untouched_and_have_no_key(self, client: TestClient) -> None:
        response = client.get("/status")
        assert response.status_code == 200
        assert "not checked" in response.text

    def test_a_websocket_under_the_prefix_is_refused(self, server: ServerProcess) -> None:
        with (
            TestClient(table_app(server.target, ROUTES)) as client,
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/api/v1/stream") as ws,
        ):
            ws.receive_text()
        assert refused.value.code == 1008

    def test_the_prefix_can_be_chosen(self, server: ServerProcess, keys: Keys) -> None:
        app = table_app(server.target, {"GET /api/v1/links": []}, prefix="/internal/")
        with TestClient(app) as client:
            assert client.get("/internal/links").status_code == 404
            assert client.get("/api/v1/forgotten").status_code == 200  # outside: untouched


class TestMistakesFailWhenTheAppIsBuilt:
    @pytest.mark.parametrize(
        "routes",
        [
            {"/api/v1/links": "links:read"},  # no method
            {"FETCH /api/v1/links": "links:read"},
            {"GET api/v1/links": "links:read"},
            {"GET /api/v1/links": "links-read"},
            {"GET /api/v1/links": [["links:read"]]},
        ],
    )
    def test_a_bad_route_table(self, server: ServerProcess, routes: dict[str, Any]) -> None:
        with pytest.raises((ValueError, TypeError)), TestClient(table_app(server.target, routes)):
            pass

    def test_a_blocking_guard(self) -> None:
        """It would stall the event loop on every request."""
        with pytest.raises(TypeError, match=r"aio\.Guard"):
            requires(Guard("127.0.0.1:1"), "links:read")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"aio\.Guard"):
            KeysvcMiddleware(echo, guard=Guard("127.0.0.1:1"), routes={})  # type: ignore[arg-type]

    def test_an_endpoint_without_a_request_parameter(self) -> None:
        async def endpoint(req: Request) -> JSONResponse:
            return JSONResponse({})

        with pytest.raises(TypeError, match="'request'"):
            requires(aio.Guard("127.0.0.1:1"), "links:read")(endpoint)

    def test_a_list_where_scope_names_belong(self) -> None:
        with pytest.raises(TypeError, match="scope is a name"):
            requires(aio.Guard("127.0.0.1:1"), ["links:read"])  # type: ignore[arg-type]
