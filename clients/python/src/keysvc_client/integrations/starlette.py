"""Starlette: a route decorator and an ASGI middleware that check each request's key.

    guard = keysvc_client.aio.Guard("127.0.0.1:50051")

    @requires(guard, "links:read")                        # a Starlette endpoint
    async def list_links(request: Request) -> Response:
        key = authorized_key(request)                     # or request.state.keysvc_key

    app.add_middleware(KeysvcMiddleware, guard=guard, routes={   # or a table for the whole app
        "GET /api/v1/links": "links:read",
        "POST /api/v1/links": "links:write",
    })

A refused request gets a JSON error body and the status the Verdict names (401, 403, or 503
when keysvc cannot decide), and the handler does not run. FastAPI resolves dependencies and
reads the body before any decorator runs: its routes take keysvc_client.integrations.fastapi.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, ParamSpec

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from keysvc_client._aio_guard import Guard
from keysvc_client._guard_common import (
    KeyContext,
    Verdict,
    authorization_value,
    required_scopes,
    route_table,
)
from keysvc_client.integrations import _routes

__all__ = ["STATE_KEY", "KeysvcMiddleware", "authorized_key", "error_response", "requires"]

log = logging.getLogger("keysvc_client.guard")

STATE_KEY = "keysvc_key"
"""The attribute of `request.state` that holds the authorized key's KeyContext."""

_P = ParamSpec("_P")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def requires(
    guard: Guard, *scopes: str
) -> Callable[[Callable[_P, Any]], Callable[_P, Coroutine[Any, Any, Any]]]:
    """Decorates an endpoint so that it runs only for a key holding every one of `scopes`.

    The endpoint (async or not, a function or an HTTPEndpoint method) takes the `request`
    and nothing else; it finds the key in `request.state.keysvc_key` (see authorized_key).
    An endpoint with other parameters is a FastAPI one, which FastAPI would fill (running its
    dependencies, reading the body) before this check: it is refused here, and so is a FastAPI
    route reaching a decorated endpoint (500, logged).
    """
    _check_guard(guard)
    required = required_scopes(scopes)

    def decorator(endpoint: Callable[_P, Any]) -> Callable[_P, Coroutine[Any, Any, Any]]:
        index = _request_index(endpoint)
        is_async = inspect.iscoroutinefunction(endpoint)

        @functools.wraps(endpoint)
        async def checked(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            request = kwargs.get("request", args[index] if index < len(args) else None)
            if not isinstance(request, Request):
                raise TypeError(f"{endpoint.__qualname__} was called without a Request")
            if getattr(request.scope.get("route"), "dependant", None) is not None:
                # FastAPI has already run the route's dependencies: too late to check.
                return _misconfigured(
                    request, "Starlette's requires() on a FastAPI route runs after its dependencies"
                )
            verdict = await guard.check(
                _authorization(request.headers),
                required,
                client_ip=guard.trusted_proxies.asgi_client(request.scope),
            )
            if not verdict.allowed:
                return error_response(verdict, guard.realm)
            setattr(request.state, STATE_KEY, verdict.key)
            if is_async:
                return await endpoint(*args, **kwargs)
            return await run_in_threadpool(endpoint, *args, **kwargs)

        return checked

    return decorator


def authorized_key(request: HTTPConnection) -> KeyContext:
    """The key that requires() or KeysvcMiddleware authorized for this request.

    Raises LookupError when neither checked it: a route without protection has no key.
    """
    key = getattr(request.state, STATE_KEY, None)
    if not isinstance(key, KeyContext):
        raise LookupError("this request's key was not checked: protect the route with keysvc")
    return key


def error_response(verdict: Verdict, realm: str = "api") -> JSONResponse:
    """The JSON answer to a refused request, with its WWW-Authenticate or Retry-After header."""
    return JSONResponse(verdict.error_body(), verdict.status, headers=verdict.headers(realm))


class KeysvcMiddleware:
    """ASGI middleware that checks every request under `prefix` against a table of routes.

    `routes` maps "METHOD /path" (Starlette path syntax: "/api/v1/links/{link_id}") to the
    scope or scopes it needs; an empty list means any valid key. A GET route covers HEAD.

    The request is checked against the line of the route the app will run: the middleware
    finds it as Starlette's Router does (routes in order, Mount and Host included, paths taken
    relative to the root path), so overlapping lines cannot weaken a route. A request under
    `prefix` ("/api/" by default) whose route has no line is refused before it reaches the
    app, with 404 (405 when only other methods are declared): a route added to the app but
    not to the table is unreachable, never unprotected. Where the routes cannot be seen (a
    raw ASGI app, a mounted non-Starlette app), a request is checked against every line whose
    path matches it, needing the scopes of all of them.

    When the middleware can see the app's routes it checks the table against them as the app
    is built: a line that names no route, or a method its route does not serve, is an error,
    and so is a FastAPI app (protect that with keysvc_client.integrations.fastapi).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Guard,
        routes: Mapping[str, str | Iterable[str]],
        prefix: str = "/api/",
    ) -> None:
        _check_guard(guard)
        if not prefix.startswith("/"):
            raise ValueError(f"prefix must be a path starting with '/', not {prefix!r}")
        self.app = app
        self._guard = guard
        self._prefix = prefix
        self._lines: list[tuple[str, str, re.Pattern[str], tuple[str, ...]]] = []
        self._declared: dict[str, dict[str, tuple[str, ...]]] = {}
        for route, scopes in route_table(routes).items():
            method, _, path = route.partition(" ")
            method, path = method.upper(), path.strip()
            if method not in _METHODS or not path.startswith("/"):
                raise ValueError(f"route {route!r} is not 'METHOD /path', e.g. 'GET /api/v1/links'")
            self._lines.append((method, path, compile_path(path)[0], scopes))
            self._declared.setdefault(_routes.template_key(path), {})[method] = scopes
        self._router = _routes.router_of(app)
        if self._router is not None:
            self._check_table(_routes.survey(self._router))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _routes.route_path(scope)
        place = (
            _routes.resolve(self._router.routes, scope)
            if self._router is not None
            else _routes.Place("opaque")
        )
        if place.kind == "route":
            declared = self._declared.get(_routes.template_key(place.template), {})
        elif place.kind == "opaque":
            declared = self._matching_lines(path)
        else:
            declared = {}
        under = path.startswith(self._prefix) or place.template.startswith(self._prefix)
        if not declared and not under:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # No WebSocket route can be declared: refuse the handshake rather than let it by.
            await send({"type": "websocket.close", "code": 1008})
            return
        method: str = scope["method"]
        required = declared.get(method)
        if required is None and method == "HEAD":
            required = declared.get("GET")
        if required is None:
            await self._undeclared(scope, receive, send, path, sorted(declared))
            return
        verdict = await self._guard.check(
            _authorization(Headers(scope=scope)),
            required,
            client_ip=self._guard.trusted_proxies.asgi_client(scope),
        )
        if not verdict.allowed:
            await error_response(verdict, self._guard.realm)(scope, receive, send)
            return
        # A dict of this request's own: the key must never reach another request's state.
        scope["state"] = {**scope.get("state", {}), STATE_KEY: verdict.key}
        await self.app(scope, receive, send)

    def _matching_lines(self, path: str) -> dict[str, tuple[str, ...]]:
        """Every declared method of the lines matching `path`, each needing the scopes of all
        the lines that declare it: where the route cannot be known, no line can weaken another."""
        declared: dict[str, dict[str, None]] = {}
        for method, _, pattern, scopes in self._lines:
            if pattern.match(path):
                declared.setdefault(method, {}).update(dict.fromkeys(scopes))
        return {method: tuple(scopes) for method, scopes in declared.items()}

    def _check_table(self, app: _routes.Survey) -> None:
        if app.fastapi:
            where = ", ".join(repr(path) for path in app.fastapi if path)
            raise TypeError(
                "KeysvcMiddleware cannot see how FastAPI routes a request"
                + (f" (FastAPI mounted at {where})" if where else "")
                + ": protect FastAPI routes with keysvc_client.integrations.fastapi"
            )
        served = app.by_template()
        problems = []
        for method, path, _, _ in self._lines:
            known = served.get(_routes.template_key(path))
            if known is None:
                if not any(path.startswith(f"{mounted}/") for mounted in app.opaque):
                    problems.append(f"{method} {path} names no route of the app")
            elif known.websocket:
                problems.append(f"{method} {path} is a WebSocket route, which cannot be declared")
            elif known.methods is not None and method not in known.methods:
                served_methods = ", ".join(sorted(known.methods))
                problems.append(f"{method} {path}: the route serves only {served_methods}")
        if problems:
            raise ValueError(
                "KeysvcMiddleware's routes do not match the app: " + "; ".join(problems)
            )
        for known in app.routes:
            declared = _routes.template_key(known.template) in self._declared
            if known.template.startswith(self._prefix) and not declared and not known.websocket:
                log.warning(
                    "route %r is under %r but not in KeysvcMiddleware's routes: it answers 404",
                    known.template,
                    self._prefix,
                )

    async def _undeclared(
        self, scope: Scope, receive: Receive, send: Send, path: str, allowed: list[str]
    ) -> None:
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            body = {
                "error": {
                    "status": 405,
                    "reason": "method_not_allowed",
                    "message": "method not allowed",
                }
            }
            response = JSONResponse(body, 405, headers={"Allow": ", ".join(sorted(set(allowed)))})
        else:
            # What came from outside is logged with repr: an encoded newline cannot forge a line.
            log.warning(
                "%r %r is under %r but no line of KeysvcMiddleware's routes declares its route: "
                "answering 404",
                scope["method"],
                path,
                self._prefix,
            )
            body = {"error": {"status": 404, "reason": "not_found", "message": "no such route"}}
            response = JSONResponse(body, 404)
        await response(scope, receive, send)


def _check_guard(guard: object) -> None:
    if not isinstance(guard, Guard):
        raise TypeError(
            f"Starlette needs a keysvc_client.aio.Guard, not {type(guard).__name__}: "
            "a blocking Guard would stall the event loop"
        )


def _request_index(endpoint: Callable[..., Any]) -> int:
    names = list(inspect.signature(endpoint).parameters)
    others = [
        name
        for position, name in enumerate(names)
        if name != "request" and not (position == 0 and name == "self")
    ]
    if others:
        raise TypeError(
            f"{endpoint.__qualname__} takes {', '.join(map(repr, others))} besides 'request': "
            "FastAPI would fill those (running dependencies, reading the body) before this "
            "check. Protect FastAPI routes with keysvc_client.integrations.fastapi"
        )
    if "request" not in names:
        raise TypeError(
            f"{endpoint.__qualname__} needs a parameter named 'request' for keysvc to check"
        )
    return names.index("request")


def _misconfigured(request: Request, problem: str) -> JSONResponse:
    log.error("%r %r: %s: refusing with 500", request.method, request.url.path, problem)
    body = {
        "error": {
            "status": 500,
            "reason": "misconfigured",
            "message": "the API key could not be checked",
        }
    }
    return JSONResponse(body, 500, headers={"Cache-Control": "no-store"})


def _authorization(headers: Headers) -> str | None:
    return authorization_value(headers.getlist("authorization"))
