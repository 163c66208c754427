"""The dashboard's Starlette application: its routes, static files, templates and headers."""

from __future__ import annotations

from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keysvc.dashboard import pages, signin
from keysvc.dashboard.client import Keysvc
from keysvc.dashboard.sessions import Sessions
from keysvc.dashboard.users import UsersFile
from keysvc.dashboard.web import (
    NOT_FOUND_TEXT,
    Dashboard,
    SecurityHeaders,
    account_page,
    dashboard_of,
    error_page,
    session_of,
    signed_in_page,
)

__all__ = ["create_app", "templates"]

HERE = Path(__file__).parent
KEYS = "/accounts/{account}/keys"
KEY = KEYS + "/{key_id}"


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        # Everything a user or keysvc wrote is text on the page, markup in it included.
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) as the dashboard's pages."""
    dashboard = dashboard_of(request)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    session = session_of(dashboard, request)
    if status == 404:
        return error_page(dashboard, 404, "Not found", NOT_FOUND_TEXT, session)
    if status == 405:
        return error_page(dashboard, 405, "Not allowed", "This page does not take that.", session)
    return error_page(
        dashboard, status, "Something went wrong", "The dashboard could not answer.", session
    )


def create_app(keysvc: Keysvc, users: UsersFile, sessions: Sessions) -> Starlette:
    """The dashboard over `keysvc`, letting in the people of `users`."""
    routes = [
        Route("/signin", signin.signin_form, methods=["GET"]),
        Route("/signin", signin.signin, methods=["POST"]),
        Route("/signout", signed_in_page(signin.signout), methods=["POST"]),
        Route("/", signed_in_page(signin.home), methods=["GET"]),
        Route("/accounts", signed_in_page(signin.open_account), methods=["GET"]),
        Route(KEYS, account_page(pages.keys_page), methods=["GET"]),
        Route(KEYS + "/new", account_page(pages.new_key_form), methods=["GET"]),
        Route(KEYS + "/new", account_page(pages.create_key), methods=["POST"]),
        Route(KEY + "/revoke", account_page(pages.revoke_form), methods=["GET"]),
        Route(KEY + "/revoke", account_page(pages.revoke_key), methods=["POST"]),
        Route(KEY + "/roll", account_page(pages.roll_form), methods=["GET"]),
        Route(KEY + "/roll", account_page(pages.roll_key), methods=["POST"]),
        Route(KEY + "/edit", account_page(pages.edit_form), methods=["GET"]),
        Route(KEY + "/edit", account_page(pages.edit_key), methods=["POST"]),
        Route("/accounts/{account}/audit", account_page(pages.audit_page), methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
    )
    app.state.dashboard = Dashboard(
        keysvc=keysvc, users=users, sessions=sessions, templates=templates()
    )
    return app
