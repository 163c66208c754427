"""Starlette and FastAPI: a route decorator and an ASGI middleware that check each request's key.

    guard = keysvc_client.aio.Guard("127.0.0.1:50051")

    @requires(guard, "links:read")                        # a Starlette (or FastAPI) endpoint
    async def list_links(request: Request) -> Response:
        key = authorized_key(request)                     # or request.state.keysvc_key

    app.add_middleware(KeysvcMiddleware, guard=guard, routes={   # or a table, for any ASGI app
        "GET /api/v1/links": "links:read",
        "POST /api/v1/links": "links:write",
    })

A refused request gets a JSON error body and the status the Verdict names (401, 403, or 503
when keysvc cannot decide), and the handler does not run.
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

    The endpoint (async or not, a function or an HTTPEndpoint method) needs a parameter named
    `request`; it finds the key in `request.state.keysvc_key` (see authorized_key).
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
            verdict = await guard.check(_authorization(request.headers), required)
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
    Requests under `prefix` ("/api/" by default) that match no entry are refused before they
    reach the app, with 404 (no such path) or 405 (not with this method), so a route added to
    the app but not to the table is unreachable, never unprotected. Paths outside `prefix`
    and not in the table pass through untouched.
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
        self._routes: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = []
        for route, scopes in route_table(routes).items():
            method, _, path = route.partition(" ")
            method, path = method.upper(), path.strip()
            if method not in _METHODS or not path.startswith("/"):
                raise ValueError(f"route {route!r} is not 'METHOD /path', e.g. 'GET /api/v1/links'")
            self._routes.append((method, compile_path(path)[0], scopes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        methods = {m: s for m, pattern, s in self._routes if pattern.match(path)}
        if not methods and not path.startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # No WebSocket route can be declared: refuse the handshake rather than let it by.
            await send({"type": "websocket.close", "code": 1008})
            return
        method: str = scope["method"]
        if method == "HEAD" and "HEAD" not in methods:
            method = "GET"
        required = methods.get(method)
        if required is None:
            await self._undeclared(scope, receive, send, path, sorted(methods))
            return
        verdict = await self._guard.check(_authorization(Headers(scope=scope)), required)
        if not verdict.allowed:
            await error_response(verdict, self._guard.realm)(scope, receive, send)
            return
        # A dict of this request's own: the key must never reach another request's state.
        scope["state"] = {**scope.get("state", {}), STATE_KEY: verdict.key}
        await self.app(scope, receive, send)

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
            log.warning(
                "%s %s is under %s but not in KeysvcMiddleware's routes: answering 404",
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
    for index, parameter in enumerate(inspect.signature(endpoint).parameters.values()):
        if parameter.name == "request":
            return index
    raise TypeError(
        f"{endpoint.__qualname__} needs a parameter named 'request' for keysvc to check"
    )


def _authorization(headers: Headers) -> str | None:
    return authorization_value(headers.getlist("authorization"))
