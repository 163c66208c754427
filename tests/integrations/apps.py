"""The same small API server built with each HTTP integration, and a test client for each.

Every flavour serves:

    GET  /api/v1/links   needs links:read    {"handler": "list_links", "key": {...}}
    POST /api/v1/links   needs links:write   201 {"handler": "create_link", "key": {...}}
    GET  /api/v1/me      needs any valid key {"handler": "me", "key": {...}}
    GET  /health         unprotected         {"status": "ok"}

and counts the handler runs, so a test can tell that a refused request reached no handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask
from keysvc_client import Guard, aio
from keysvc_client.integrations import flask as keysvc_flask
from keysvc_client.integrations import starlette as keysvc_starlette
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

FLAVOURS = ("starlette-decorator", "starlette-middleware", "flask")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any  # a case-insensitive mapping, as each test client gives it
    body: Any


@dataclass
class Api:
    """A running app of one flavour, behind its framework's own test client."""

    flavour: str
    request: Callable[[str, str, Mapping[str, Any]], Answer]
    close: Callable[[], None]
    handled: list[str] = field(default_factory=list)

    def get(self, path: str, authorization: str | list[str] | None = None) -> Answer:
        return self.request("GET", path, {"headers": _headers(authorization)})

    def post(
        self, path: str, authorization: str | list[str] | None = None, json: Any = None
    ) -> Answer:
        return self.request("POST", path, {"headers": _headers(authorization), "json": json})


def _headers(authorization: str | list[str] | None) -> list[tuple[str, str]]:
    if authorization is None:
        return []
    values = [authorization] if isinstance(authorization, str) else authorization
    return [("Authorization", value) for value in values]


def build(flavour: str, target: str, **guard_options: Any) -> Api:
    """The flavour's app with a Guard of the right kind for keysvc at `target`."""
    if flavour == "flask":
        return _flask(Guard(target, **guard_options))
    guard = aio.Guard(target, **guard_options)
    if flavour == "starlette-decorator":
        return _starlette_decorated(guard)
    if flavour == "starlette-middleware":
        return _starlette_middleware(guard)
    raise ValueError(flavour)


def _starlette_client(app: Starlette, handled: list[str], flavour: str) -> Api:
    client = TestClient(app, raise_server_exceptions=True)
    client.__enter__()  # one event loop for the whole test, as a server has

    def request(method: str, path: str, options: Mapping[str, Any]) -> Answer:
        response = client.request(method, path, **options)
        body = response.json() if response.content else None
        return Answer(response.status_code, response.headers, body)

    return Api(flavour, request, lambda: client.__exit__(None, None, None), handled)


def _starlette_decorated(guard: aio.Guard) -> Api:
    handled: list[str] = []
    requires = keysvc_starlette.requires

    @requires(guard, "links:read")
    async def list_links(request: Request) -> JSONResponse:
        handled.append("list_links")
        key = keysvc_starlette.authorized_key(request)
        return JSONResponse({"handler": "list_links", "key": key.as_dict()})

    # A blocking endpoint: Starlette runs it in a thread, after the check.
    @requires(guard, "links:write")
    def create_link(request: Request) -> JSONResponse:
        handled.append("create_link")
        key = request.state.keysvc_key
        return JSONResponse({"handler": "create_link", "key": key.as_dict()}, status_code=201)

    class Me(HTTPEndpoint):
        @requires(guard)
        async def get(self, request: Request) -> JSONResponse:
            handled.append("me")
            key = keysvc_starlette.authorized_key(request)
            return JSONResponse({"handler": "me", "key": key.as_dict()})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/api/v1/links", list_links, methods=["GET"]),
            Route("/api/v1/links", create_link, methods=["POST"]),
            Route("/api/v1/me", Me),
            Route("/health", health),
        ]
    )
    return _starlette_client(app, handled, "starlette-decorator")


def _starlette_middleware(guard: aio.Guard) -> Api:
    handled: list[str] = []

    async def list_links(request: Request) -> JSONResponse:
        handled.append("list_links")
        key = keysvc_starlette.authorized_key(request)
        return JSONResponse({"handler": "list_links", "key": key.as_dict()})

    async def create_link(request: Request) -> JSONResponse:
        handled.append("create_link")
        key = request.state.keysvc_key
        return JSONResponse({"handler": "create_link", "key": key.as_dict()}, status_code=201)

    async def me(request: Request) -> JSONResponse:
        handled.append("me")
        key = keysvc_starlette.authorized_key(request)
        return JSONResponse({"handler": "me", "key": key.as_dict()})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/api/v1/links", list_links, methods=["GET"]),
            Route("/api/v1/links", create_link, methods=["POST"]),
            Route("/api/v1/me", me),
            Route("/health", health),
        ],
        middleware=[
            Middleware(
                keysvc_starlette.KeysvcMiddleware,
                guard=guard,
                routes={
                    "GET /api/v1/links": "links:read",
                    "POST /api/v1/links": ["links:write"],
                    "GET /api/v1/me": [],
                },
            )
        ],
    )
    return _starlette_client(app, handled, "starlette-middleware")


def _flask(guard: Guard) -> Api:
    handled: list[str] = []
    app = flask.Flask(__name__)
    keysvc_flask.protect(app)
    requires = keysvc_flask.requires

    @app.get("/api/v1/links")
    @requires(guard, "links:read")
    def list_links() -> Any:
        handled.append("list_links")
        return {"handler": "list_links", "key": keysvc_flask.authorized_key().as_dict()}

    @app.post("/api/v1/links")
    @requires(guard, "links:write")
    def create_link() -> Any:
        handled.append("create_link")
        return {"handler": "create_link", "key": flask.g.keysvc_key.as_dict()}, 201

    @app.get("/api/v1/me")
    @requires(guard)
    def me() -> Any:
        handled.append("me")
        return {"handler": "me", "key": keysvc_flask.authorized_key().as_dict()}

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"}

    client = app.test_client()

    def request(method: str, path: str, options: Mapping[str, Any]) -> Answer:
        response = client.open(path, method=method, **options)
        return Answer(response.status_code, response.headers, response.get_json(silent=True))

    return Api("flask", request, guard.close, handled)
