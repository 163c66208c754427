"""Sample API servers in every shape the integrations support, served by real servers.

    python -m uvicorn --factory tests.integrations.sample_apps:starlette_table [--root-path /svc]
    python -m uvicorn --factory tests.integrations.sample_apps:starlette_mounted
    python -m uvicorn --factory tests.integrations.sample_apps:starlette_decorated
    python -m uvicorn --factory tests.integrations.sample_apps:fastapi_app
    python -m tests.integrations.sample_apps flask --port 8000     (werkzeug, one thread)

Each checks keys with the keysvc at KEYSVC_TARGET, trusting the proxies in
SAMPLE_TRUSTED_PROXIES (none unless set). Every handler answers
{"handler": name, "key_id": ...} and notes its name (and a dependency's side effect) in a list
that GET /_ran, outside the API, returns: a test can tell that a refused request ran nothing.

DECLARED says, for each app, what every route must be: checked with exactly these scopes, or
unreachable (refused whatever the key), or public (outside the API). test_every_route.py walks
each app's routes with its framework's own listing and holds each to its line.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name
# values local to the app's factory (its Guard, its dependencies).
import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import fastapi
import flask
from keysvc_client import Guard, KeyContext, aio
from keysvc_client.integrations import fastapi as keysvc_fastapi
from keysvc_client.integrations import flask as keysvc_flask
from keysvc_client.integrations import starlette as keysvc_starlette
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import run_simple

PUBLIC = "public"
UNREACHABLE = "unreachable"

# (method, path template) -> the scopes the route is checked with, UNREACHABLE or PUBLIC.
Declared = Mapping[tuple[str, str], tuple[str, ...] | str]


@dataclass(frozen=True)
class Sample:
    """What test_every_route.py needs to know of one sample app."""

    declared: Declared
    # Paths inside apps whose routes no listing shows (a raw ASGI app), tried as they are.
    opaque: Declared = field(default_factory=dict)


def _target() -> str:
    return os.environ.get("KEYSVC_TARGET", "127.0.0.1:50051")


def _timeout() -> float:
    return float(os.environ.get("KEYSVC_TIMEOUT_SECONDS") or 5.0)


def _guard_options() -> dict[str, Any]:
    """The Guard's settings from the environment: its deadline, and the proxies trusted to
    say where a request came from (SAMPLE_TRUSTED_PROXIES, comma-separated, in the header
    SAMPLE_FORWARDED_HEADER)."""
    proxies = os.environ.get("SAMPLE_TRUSTED_PROXIES", "")
    return {
        "timeout": _timeout(),
        "trusted_proxies": [proxy for proxy in proxies.split(",") if proxy],
        "forwarded_header": os.environ.get("SAMPLE_FORWARDED_HEADER") or "x-forwarded-for",
    }


if os.environ.get("SAMPLE_APPS_LOG"):
    # Served (see servers.py): log to stderr in Python's default format, in which a forged
    # "ERROR:keysvc_client.guard:..." line would look real.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")


def _key_id(key: KeyContext | None) -> str | None:
    return key.key_id if key is not None else None


# ---------------------------------------------------------------------------------------------
# Starlette, protected by KeysvcMiddleware's table


TABLE = {
    # Listed before the pattern that also matches its path, as in the app: the table's order
    # must not matter, only the route Starlette runs.
    "GET /api/v1/links/export": ["links:read", "customers:read"],
    "GET /api/v1/links/{link_id}": "links:read",
    "POST /api/v1/links/{link_id}": "links:write",
    "GET /api/v2/customers/{customer_id}": "customers:read",
    "POST /api/v2/customers": ["customers:write"],
    "GET /api/raw/status": "events:read",
}

STARLETTE_TABLE = Sample(
    declared={
        ("GET", "/api/v1/links/export"): ("links:read", "customers:read"),
        ("GET", "/api/v1/links/{link_id}"): ("links:read",),
        ("POST", "/api/v1/links/refund_all"): UNREACHABLE,  # in the app, not in the table
        ("POST", "/api/v1/links/{link_id}"): ("links:write",),
        ("GET", "/api/v1/forgotten"): UNREACHABLE,
        ("GET", "/api/v2/customers/{customer_id}"): ("customers:read",),
        ("POST", "/api/v2/customers"): ("customers:write",),
        ("GET", "/health"): PUBLIC,
        ("GET", "/_ran"): PUBLIC,
    },
    opaque={
        ("GET", "/api/raw/status"): ("events:read",),
        ("GET", "/api/raw/other"): UNREACHABLE,
    },
)


def _starlette_endpoint(name: str, ran: list[str]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        ran.append(name)
        key = getattr(request.state, keysvc_starlette.STATE_KEY, None)
        return JSONResponse({"handler": name, "key_id": _key_id(key)})

    return endpoint


def _ran_endpoint(ran: list[str]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(ran)

    return endpoint


def _raw_app(ran: list[str]) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app with no routes to show: what a mounted non-Starlette app looks like."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        name = f"raw {scope['path'][len(scope.get('root_path', '')) :]}"
        ran.append(name)
        key = scope.get("state", {}).get(keysvc_starlette.STATE_KEY)
        await JSONResponse({"handler": name, "key_id": _key_id(key)})(scope, receive, send)

    return app


def _table_app(ran: list[str]) -> Starlette:
    def endpoint(name: str) -> Callable[[Request], Any]:
        return _starlette_endpoint(name, ran)

    return Starlette(
        routes=[
            Route("/api/v1/links/export", endpoint("export_links"), methods=["GET"]),
            Route("/api/v1/links/{link_id}", endpoint("get_link"), methods=["GET"]),
            Route("/api/v1/links/refund_all", endpoint("refund_all"), methods=["POST"]),
            Route("/api/v1/links/{link_id}", endpoint("update_link"), methods=["POST"]),
            Route("/api/v1/forgotten", endpoint("forgotten")),
            Mount(
                "/api/v2",
                routes=[
                    Route("/customers/{customer_id}", endpoint("get_customer"), methods=["GET"]),
                    Route("/customers", endpoint("create_customer"), methods=["POST"]),
                ],
            ),
            Mount("/api/raw", app=_raw_app(ran)),
            Route("/health", endpoint("health")),
            Route("/_ran", _ran_endpoint(ran)),
        ],
        middleware=[
            Middleware(
                keysvc_starlette.KeysvcMiddleware,
                guard=aio.Guard(_target(), **_guard_options()),
                routes=TABLE,
            )
        ],
    )


def starlette_table() -> Starlette:
    """The table-protected app, as `uvicorn --factory` (with or without --root-path) serves it."""
    return _table_app([])


def starlette_mounted() -> Starlette:
    """The table-protected app mounted at /svc in another app: it sees root_path "/svc"."""
    ran: list[str] = []
    return Starlette(
        routes=[Mount("/svc", app=_table_app(ran)), Route("/_ran", _ran_endpoint(ran))]
    )


# ---------------------------------------------------------------------------------------------
# Starlette, protected by the route decorator


STARLETTE_DECORATED = Sample(
    declared={
        ("GET", "/api/v1/links"): ("links:read",),
        ("POST", "/api/v1/links"): ("links:write",),
        ("GET", "/api/v1/me"): (),
        ("GET", "/api/v2/customers/{customer_id}"): ("customers:read", "customers:write"),
        ("GET", "/health"): PUBLIC,
        ("GET", "/_ran"): PUBLIC,
    }
)


def starlette_decorated() -> Starlette:
    ran: list[str] = []
    guard = aio.Guard(_target(), **_guard_options())
    requires = keysvc_starlette.requires

    def endpoint(name: str, *scopes: str) -> Callable[[Request], Any]:
        return requires(guard, *scopes)(_starlette_endpoint(name, ran))

    class Me(HTTPEndpoint):
        @requires(guard)
        async def get(self, request: Request) -> JSONResponse:
            ran.append("me")
            key = keysvc_starlette.authorized_key(request)
            return JSONResponse({"handler": "me", "key_id": key.key_id})

    return Starlette(
        routes=[
            Route("/api/v1/links", endpoint("list_links", "links:read"), methods=["GET"]),
            Route("/api/v1/links", endpoint("create_link", "links:write"), methods=["POST"]),
            Route("/api/v1/me", Me, methods=["GET"]),
            Mount(
                "/api/v2",
                routes=[
                    Route(
                        "/customers/{customer_id}",
                        endpoint("get_customer", "customers:read", "customers:write"),
                        methods=["GET"],
                    )
                ],
            ),
            Route("/health", _starlette_endpoint("health", ran)),
            Route("/_ran", _ran_endpoint(ran)),
        ]
    )


# ---------------------------------------------------------------------------------------------
# FastAPI, protected by KeysvcRoute


FASTAPI = Sample(
    declared={
        # The links router declares links:read for all its routes; each route adds its own.
        ("GET", "/api/v1/links/export"): ("links:read", "customers:read"),
        ("GET", "/api/v1/links/{link_id}"): ("links:read",),
        ("POST", "/api/v1/links/{link_id}/refund"): ("links:read", "links:write"),
        ("POST", "/api/v1/customers"): ("customers:write",),
        # requires() on a router without KeysvcRoute: refused for every key, never run late.
        ("GET", "/api/v1/misrouted"): UNREACHABLE,
        ("GET", "/health"): PUBLIC,
        ("GET", "/_ran"): PUBLIC,
    }
)


class Refund(BaseModel):
    amount: int


class NewCustomer(BaseModel):
    name: str
    email: str


def fastapi_app() -> fastapi.FastAPI:
    ran: list[str] = []
    guard = aio.Guard(_target(), **_guard_options())
    requires = keysvc_fastapi.requires
    KeysvcRoute = keysvc_fastapi.KeysvcRoute

    def load_link(link_id: str) -> dict[str, str]:
        """A dependency with a side effect, and an answer that tells whether a link exists."""
        ran.append(f"load_link {link_id}")
        if link_id == "missing":
            raise fastapi.HTTPException(404, "no such payment link")
        return {"id": link_id}

    Link = Annotated[dict[str, str], fastapi.Depends(load_link)]
    Key = Annotated[KeyContext, requires(guard)]

    links = fastapi.APIRouter(
        prefix="/links", route_class=KeysvcRoute, dependencies=[requires(guard, "links:read")]
    )

    @links.get("/export", dependencies=[requires(guard, "customers:read")])
    async def export_links(key: Key) -> dict[str, Any]:
        ran.append("export_links")
        return {"handler": "export_links", "key_id": key.key_id}

    @links.get("/{link_id}")
    async def get_link(link: Link, request: fastapi.Request) -> dict[str, Any]:
        ran.append("get_link")
        key = keysvc_fastapi.authorized_key(request)
        return {"handler": "get_link", "key_id": key.key_id, "link": link}

    @links.post("/{link_id}/refund", dependencies=[requires(guard, "links:write")])
    async def refund(link: Link, body: Refund, key: Key) -> dict[str, Any]:
        ran.append("refund")
        return {"handler": "refund", "key_id": key.key_id, "amount": body.amount}

    customers = fastapi.APIRouter(prefix="/customers", route_class=KeysvcRoute)

    @customers.post("", status_code=201)
    async def create_customer(
        body: NewCustomer, key: Annotated[KeyContext, requires(guard, "customers:write")]
    ) -> dict[str, Any]:
        ran.append("create_customer")
        return {"handler": "create_customer", "key_id": key.key_id, "name": body.name}

    misrouted = fastapi.APIRouter()  # no KeysvcRoute: the mistake requires() refuses

    @misrouted.get("/misrouted")
    async def misrouted_endpoint(key: Annotated[KeyContext, requires(guard, "links:read")]) -> Any:
        ran.append("misrouted")
        return {"handler": "misrouted", "key_id": key.key_id}

    api = fastapi.APIRouter(prefix="/api/v1")
    api.include_router(links)
    api.include_router(customers)
    api.include_router(misrouted)

    app = fastapi.FastAPI()
    app.include_router(api)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        ran.append("health")
        return {"handler": "health", "key_id": None}

    @app.get("/_ran")
    async def ran_list() -> list[str]:
        return ran

    return app


# ---------------------------------------------------------------------------------------------
# Flask, protected by requires() and protect(), mounted under /api by a dispatcher


FLASK = Sample(
    declared={
        ("GET", "/api/v1/links/export"): ("links:read", "customers:read"),
        ("GET", "/api/v1/links/<link_id>"): ("links:read",),
        ("POST", "/api/v1/links/<link_id>"): ("links:write",),
        ("GET", "/api/v1/links/<link_id>/cached"): UNREACHABLE,  # a cache above requires()
        ("GET", "/api/v1/links/forgotten/<name>"): UNREACHABLE,  # no requires() at all
        ("POST", "/api/v1/links/upside-down"): UNREACHABLE,  # requires() above the route
        ("GET", "/api/v1/customers/<customer_id>"): ("customers:read",),
        ("GET", "/api/status"): PUBLIC,  # outside protect()'s /api/v1/
        ("GET", "/api/_requests"): PUBLIC,
        ("GET", "/health"): PUBLIC,
        ("GET", "/_ran"): PUBLIC,
    }
)


def response_cache(view: Callable[..., Any]) -> Callable[..., Any]:
    """A response cache by path, of the kind that must never sit above requires()."""
    cached: dict[str, Any] = {}

    @functools.wraps(view)
    def serve(*args: Any, **kwargs: Any) -> Any:
        if flask.request.path not in cached:
            cached[flask.request.path] = view(*args, **kwargs)
        return cached[flask.request.path]

    return serve


def flask_app(serving: bool = True) -> Any:
    """The WSGI app: the API app under /api (its SCRIPT_NAME), a root app for the rest.

    `serving=False` builds it only to list its routes, without the lifetime app context.
    """
    ran: list[str] = []
    seen_keys: list[str | None] = []  # what authorized_key() said once each request was done
    guard = Guard(_target(), **_guard_options())
    requires = keysvc_flask.requires

    api = flask.Flask("sample_api")
    keysvc_flask.protect(api, prefix="/api/v1/")

    def answer(name: str) -> dict[str, Any]:
        ran.append(name)
        return {"handler": name, "key_id": keysvc_flask.authorized_key().key_id}

    links = flask.Blueprint("links", __name__, url_prefix="/v1/links")

    @links.get("/export")
    @requires(guard, "links:read", "customers:read")
    def export_links() -> Any:
        return answer("export_links")

    @links.get("/<link_id>")
    @requires(guard, "links:read")
    def get_link(link_id: str) -> Any:
        return answer("get_link")

    @links.post("/<link_id>")
    @requires(guard, "links:write")
    def update_link(link_id: str) -> Any:
        return answer("update_link")

    @links.get("/<link_id>/cached")
    @response_cache
    @requires(guard, "links:read")
    def cached_link(link_id: str) -> Any:
        return answer("cached_link")

    @links.get("/forgotten/<name>")
    def forgotten(name: str) -> Any:
        ran.append("forgotten")
        return {"handler": "forgotten", "key_id": None}

    @requires(guard, "links:write")
    @links.post("/upside-down")
    def upside_down() -> Any:
        ran.append("upside_down")
        return {"handler": "upside_down", "key_id": None}

    customers = flask.Blueprint("customers", __name__, url_prefix="/v1/customers")

    @customers.get("/<customer_id>")
    @requires(guard, "customers:read")
    def get_customer(customer_id: str) -> Any:
        return answer("get_customer")

    api.register_blueprint(links)
    api.register_blueprint(customers)

    @api.get("/status")
    def status() -> Any:
        """Public: it says which key it sees, which must be none."""
        ran.append("status")
        try:
            key_id: str | None = keysvc_flask.authorized_key().key_id
        except LookupError:
            key_id = None
        return {"handler": "status", "key_id": key_id, "g": _key_id(flask.g.get("keysvc_key"))}

    @api.get("/_requests")
    def requests_seen() -> Any:
        return {"keys": seen_keys}

    @api.after_request
    def note_key(response: flask.Response) -> flask.Response:
        if flask.request.path != "/_requests":
            try:
                seen_keys.append(keysvc_flask.authorized_key().key_id)
            except LookupError:
                seen_keys.append(None)
        return response

    # An app context for the process's lifetime, as apps that set up extensions at import do:
    # a single-threaded server (werkzeug here, gunicorn's sync workers) then shares flask.g
    # between requests.
    if serving:
        api.app_context().push()

    root = flask.Flask("sample_root")

    @root.get("/health")
    def health() -> Any:
        ran.append("health")
        return {"handler": "health", "key_id": None}

    @root.get("/_ran")
    def ran_list() -> Any:
        return flask.jsonify(ran)

    return DispatcherMiddleware(root, {"/api": api})


def flask_api(app: Any) -> flask.Flask:
    """The API app inside flask_app()'s dispatcher, to list its routes."""
    mounted: flask.Flask = app.mounts["/api"]
    return mounted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a WSGI sample app with werkzeug.")
    parser.add_argument("app", choices=["flask"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # One thread, as gunicorn's sync workers serve: requests share the pushed app context.
    run_simple(args.host, args.port, flask_app(), threaded=False, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
