"""Where Starlette will send a request: the route it runs, found the way its Router finds it.

KeysvcMiddleware checks a request against the table line of the route the app will actually
run, so it resolves the request with the app's own routes (Route, Mount, Host, in the order
the app lists them, first full match first) rather than with the table's patterns.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Host, Match, Mount, Route, Router, WebSocketRoute
from starlette.types import Scope

__all__ = ["Known", "Place", "resolve", "route_path", "router_of", "survey", "template_key"]

# "{name}" and "{name:str}" are the same parameter; other convertors stay part of the key.
_DEFAULT_CONVERTOR = re.compile(r"\{(\w+):str\}")

# Deeper than any real middleware stack: a cycle of .app attributes must not hang the build.
_MAX_WRAPPERS = 64


def route_path(scope: Scope) -> str:
    """The request's path relative to the app's root path, as Starlette's routes match it: under
    `uvicorn --root-path /svc` or in a mounted app, "/svc/api/v1/links" is "/api/v1/links"."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def template_key(template: str) -> str:
    """The form in which a table line and a route's path template are compared."""
    return _DEFAULT_CONVERTOR.sub(r"{\1}", template)


def router_of(app: object) -> Router | None:
    """The Starlette Router that `app` hands its requests to, through middleware that keeps the
    next app in `.app` (as every Starlette middleware does); None for any other ASGI app."""
    for _ in range(_MAX_WRAPPERS):
        if isinstance(app, Starlette):
            return app.router
        if isinstance(app, Router):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def is_fastapi_router(router: Router) -> bool:
    """FastAPI's router resolves included routers and low-priority routes its own way."""
    routing = sys.modules.get("fastapi.routing")  # never imported here: no app, no FastAPI
    return routing is not None and isinstance(router, routing.APIRouter)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a request goes: a route with this path template (`route`), no route at all
    (`nowhere`: the router answers 404 or redirects), or an app whose routes cannot be seen
    (`opaque`: a raw ASGI or WSGI app, a custom route class)."""

    kind: Literal["route", "nowhere", "opaque"]
    template: str = ""


def resolve(routes: Sequence[BaseRoute], scope: Scope, prefix: str = "") -> Place:
    """The place Starlette's Router sends `scope` to, among `routes` (mounted under `prefix`).

    Only `matches()` is called, on copies of the scope: nothing runs and the request's own
    scope is left as it was.
    """
    partial: tuple[BaseRoute, Scope] | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return _enter(route, {**scope, **child}, prefix)
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    if partial is not None:
        # A route that serves the path with other methods: the Router hands it the request,
        # and the route answers 405.
        return _enter(partial[0], {**scope, **partial[1]}, prefix)
    return Place("nowhere")


def _enter(route: BaseRoute, scope: Scope, prefix: str) -> Place:
    if isinstance(route, Route | WebSocketRoute):
        return Place("route", prefix + route.path)
    if isinstance(route, Mount | Host):
        router = router_of(route.app)
        if router is None or is_fastapi_router(router):
            return Place("opaque", prefix + _mount_path(route))
        return resolve(router.routes, scope, prefix + _mount_path(route))
    return Place("opaque", prefix)


def _mount_path(route: Mount | Host) -> str:
    return route.path if isinstance(route, Mount) else ""


@dataclass(frozen=True, slots=True)
class Known:
    """One route of the app, as the table must name it."""

    template: str
    methods: frozenset[str] | None  # None: any method (an ASGI endpoint class)
    websocket: bool = False


@dataclass
class Survey:
    """Every route the app's Router can reach, and the parts of it keysvc cannot see into."""

    routes: list[Known]
    opaque: list[str]  # path templates of mounted apps whose routes cannot be seen
    fastapi: list[str]  # where a FastAPI router is mounted ("" for the app itself)

    def by_template(self) -> dict[str, Known]:
        """The routes by path template, with the methods of routes that share a path merged."""
        merged: dict[str, Known] = {}
        for route in self.routes:
            key = template_key(route.template)
            seen = merged.get(key)
            if seen is None or seen.websocket:
                merged[key] = route
            elif not route.websocket:
                both = None if None in (seen.methods, route.methods) else seen.methods
                methods = None if both is None else both | (route.methods or frozenset())
                merged[key] = Known(seen.template, methods)
        return merged


def survey(router: Router) -> Survey:
    found = Survey([], [], [])
    if is_fastapi_router(router):
        found.fastapi.append("")
        return found
    for known in _walk(router.routes, "", found):
        found.routes.append(known)
    return found


def _walk(routes: Sequence[BaseRoute], prefix: str, found: Survey) -> Iterator[Known]:
    for route in routes:
        if isinstance(route, Route):
            methods = None if route.methods is None else frozenset(route.methods)
            yield Known(prefix + route.path, methods)
        elif isinstance(route, WebSocketRoute):
            yield Known(prefix + route.path, frozenset(), websocket=True)
        elif isinstance(route, Mount | Host):
            path = prefix + _mount_path(route)
            router = router_of(route.app)
            if router is None:
                found.opaque.append(path)
            elif is_fastapi_router(router):
                found.fastapi.append(path or "/")
            else:
                yield from _walk(router.routes, path, found)
        else:
            found.opaque.append(prefix)
