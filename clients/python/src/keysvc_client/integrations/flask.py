"""Flask: a view decorator that checks each request's key, and a safety net for the whole app.

    guard = keysvc_client.Guard("127.0.0.1:50051")
    protect(app)                                   # optional: refuses unprotected /api/ views

    @app.get("/api/v1/links")
    @requires(guard, "links:read")                 # below the route decorator
    def list_links():
        key = authorized_key()                     # or flask.g.keysvc_key

A refused request gets a JSON error body and the status the Verdict names (401, 403, or 503
when keysvc cannot decide), and the view does not run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

from flask import Flask, Response, current_app, g, jsonify, request

from keysvc_client._guard import Guard
from keysvc_client._guard_common import KeyContext, Verdict, authorization_value, required_scopes

__all__ = ["G_KEY", "authorized_key", "error_response", "protect", "requires"]

log = logging.getLogger("keysvc_client.guard")

G_KEY = "keysvc_key"
"""The attribute of flask.g that holds the authorized key's KeyContext."""

# On the view requires() returns, and on the function it was given: protect() tells from them
# a protected view from a route registered before requires() could wrap it.
_PROTECTED = "__keysvc_protected__"
_DECLARED = "__keysvc_scopes__"

_P = ParamSpec("_P")


def requires(guard: Guard, *scopes: str) -> Callable[[Callable[_P, Any]], Callable[_P, Any]]:
    """Decorates a view so that it runs only for a key holding every one of `scopes`.

    Put it below @app.route (or @app.get ...): a route decorator above it registers the view
    it returns. The view finds the key in flask.g.keysvc_key (see authorized_key).
    """
    if not isinstance(guard, Guard):
        raise TypeError(
            f"Flask needs a keysvc_client.Guard, not {type(guard).__name__}: "
            "the asyncio Guard cannot run in a WSGI view"
        )
    required = required_scopes(scopes)

    def decorator(view: Callable[_P, Any]) -> Callable[_P, Any]:
        @functools.wraps(view)
        def checked(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            values = request.headers.getlist("Authorization")
            verdict = guard.check(authorization_value(values), required)
            if not verdict.allowed:
                return error_response(verdict, guard.realm)
            setattr(g, G_KEY, verdict.key)
            return current_app.ensure_sync(view)(*args, **kwargs)

        setattr(checked, _PROTECTED, True)
        setattr(view, _DECLARED, required)
        return checked

    return decorator


def authorized_key() -> KeyContext:
    """The key that requires() authorized for the current request.

    Raises LookupError when nothing checked it: a route without protection has no key.
    """
    key = g.get(G_KEY)
    if not isinstance(key, KeyContext):
        raise LookupError("this request's key was not checked: protect the view with requires()")
    return key


def error_response(verdict: Verdict, realm: str = "api") -> Response:
    """The JSON answer to a refused request, with its WWW-Authenticate or Retry-After header."""
    response = jsonify(verdict.error_body())
    response.status_code = verdict.status
    response.headers.update(verdict.headers(realm))
    return response


def protect(app: Flask, prefix: str = "/api/") -> None:
    """Refuses with 500, before the view runs, every request under `prefix` to a view that
    requires() does not protect, and logs which view and why.

    That catches a view that was never decorated, and one decorated above its route
    decorator (which registered the bare view), on the first request made to it.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must be a path starting with '/', not {prefix!r}")

    def refuse_unprotected() -> Response | None:
        if not request.path.startswith(prefix) or request.endpoint is None:
            return None  # outside the API, or no such route: Flask answers as usual
        view = app.view_functions.get(request.endpoint)
        if getattr(view, _PROTECTED, False):
            return None
        if getattr(view, _DECLARED, None) is not None:
            problem = "requires() is above the route decorator, which registered the bare view"
        else:
            problem = "no requires() protects it"
        log.error(
            "%s %s reaches view %r but %s: refusing with 500",
            request.method,
            request.path,
            request.endpoint,
            problem,
        )
        body = {
            "error": {
                "status": 500,
                "reason": "misconfigured",
                "message": "the API key could not be checked",
            }
        }
        response = jsonify(body)
        response.status_code = 500
        return response

    app.before_request(refuse_unprotected)
