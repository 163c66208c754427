"""Flask: a view decorator that checks each request's key, and a safety net for the whole app.

    guard = keysvc_client.Guard("127.0.0.1:50051")
    protect(app)                                   # refuses unprotected /api/ views

    @app.get("/api/v1/links")
    @requires(guard, "links:read")                 # right below the route decorator
    def list_links():
        key = authorized_key()

A refused request gets a JSON error body and the status the Verdict names (401, 403, or 503
when keysvc cannot decide), and the view does not run.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request

from keysvc_client._guard import Guard
from keysvc_client._guard_common import KeyContext, Verdict, authorization_value, required_scopes

__all__ = ["G_KEY", "authorized_key", "error_response", "protect", "requires"]

log = logging.getLogger("keysvc_client.guard")

G_KEY = "keysvc_key"
"""The attribute of flask.g that holds the authorized key's KeyContext during the view."""

# The key of this request, kept in its WSGI environ: an app context pushed for the process's
# lifetime makes flask.g outlive the request, the environ never does.
_ENVIRON_KEY = "keysvc_client.key"

# What protect() tells a guarded view by: the very functions requires() returned (a wrapper
# copies their attributes with functools.wraps, never their identity), and the views they wrap.
_GUARDS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
_GUARDED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

_P = ParamSpec("_P")


def requires(guard: Guard, *scopes: str) -> Callable[[Callable[_P, Any]], Callable[_P, Any]]:
    """Decorates a view so that it runs only for a key holding every one of `scopes`.

    Put it right below @app.route (or @app.get ...): a route decorator above it registers the
    view it returns, and any other decorator between them would run before the check. The view
    finds the key with authorized_key() (or flask.g.keysvc_key, set while the view runs).
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
            # Whatever an earlier request left in a long-lived flask.g is gone before the check.
            g.pop(G_KEY, None)
            values = request.headers.getlist("Authorization")
            verdict = guard.check(
                authorization_value(values),
                required,
                client_ip=guard.trusted_proxies.wsgi_client(request.environ),
            )
            if not verdict.allowed:
                return error_response(verdict, guard.realm)
            request.environ[_ENVIRON_KEY] = verdict.key
            setattr(g, G_KEY, verdict.key)
            try:
                return current_app.ensure_sync(view)(*args, **kwargs)
            finally:
                g.pop(G_KEY, None)

        _GUARDS.add(checked)
        _GUARDED.add(view)
        return checked

    return decorator


def authorized_key() -> KeyContext:
    """The key that requires() authorized for the current request.

    Raises LookupError when nothing checked it: a route without protection has no key, and
    no request ever sees another request's key.
    """
    key = request.environ.get(_ENVIRON_KEY) if has_request_context() else None
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
    """Refuses with 500, before the view and before any other before_request function, every
    request under `prefix` to a view that requires() does not protect, and logs which view and
    why.

    That catches a view that was never decorated, one decorated above its route decorator
    (which registered the bare view), and one with another decorator above requires() (which
    would run before the check: a response cache would serve one key's answer to anyone). The
    app's first request logs every such view; each request to one is refused.

    A request is under `prefix` when its path within the app or its whole path (SCRIPT_NAME
    included: an app mounted under /api, by a dispatcher or by the WSGI server) starts with it.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must be a path starting with '/', not {prefix!r}")

    surveyed = False

    def survey() -> None:
        """Names every unguarded view under the prefix at once, on the app's first request
        (the first moment its routes and SCRIPT_NAME are both known)."""
        for rule in app.url_map.iter_rules():
            whole = request.script_root + rule.rule
            if not (rule.rule.startswith(prefix) or whole.startswith(prefix)):
                continue
            problem = _unguarded(app.view_functions.get(rule.endpoint))
            if problem is not None:
                log.error(
                    "view %r (%s) is under %r but %s: its requests are refused with 500",
                    rule.endpoint,
                    rule.rule,
                    prefix,
                    problem,
                )

    def refuse_unprotected() -> Response | None:
        nonlocal surveyed
        if not surveyed:
            surveyed = True
            survey()
        whole = request.script_root + request.path
        if not (request.path.startswith(prefix) or whole.startswith(prefix)):
            return None
        if request.endpoint is None:
            return None  # no such route: Flask answers 404 or 405, and no view runs
        problem = _unguarded(app.view_functions.get(request.endpoint))
        if problem is None:
            return None
        # What came from outside is logged with repr: an encoded newline cannot forge a line.
        log.error(
            "%r %r reaches view %r but %s: refusing with 500",
            request.method,
            whole,
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

    # First of the app's before_request functions, so none of them runs for a request the
    # safety net refuses.
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_unprotected)


def _unguarded(view: Callable[..., Any] | None) -> str | None:
    """Why `view` is not guarded by requires(), or None when it is."""
    if view is None or view in _GUARDS:
        return None
    inner = getattr(view, "__wrapped__", None)
    while inner is not None:
        if inner in _GUARDS:
            # The wrapper's own code names it: functools.wraps gave it the view's __qualname__.
            code = getattr(view, "__code__", None)
            name = getattr(code, "co_qualname", None) or repr(view)
            return (
                f"a decorator above requires() ({name}) runs before the key check; "
                "put requires() right below the route decorator"
            )
        inner = getattr(inner, "__wrapped__", None)
    if view in _GUARDED:
        return "requires() is above the route decorator, which registered the bare view"
    return "no requires() protects it"
