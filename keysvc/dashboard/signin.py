"""The pages about who is signed in: sign-in, sign-out, and the accounts the user may open."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from keysvc.dashboard.users import ACCOUNT_PATTERN, NAME_PATTERN
from keysvc.dashboard.web import (
    CSRF_FIELD,
    CSRF_TEXT,
    NOT_FOUND_TEXT,
    Form,
    FormError,
    Visit,
    dashboard_of,
    error_page,
    read_form,
    redirect,
    render,
    session_of,
    user_of,
)

log = logging.getLogger(__name__)

WRONG_SIGN_IN = "Wrong name or password"
THROTTLED = "Too many failed sign-ins for this name; wait a minute and try again."


async def signin_form(request: Request) -> Response:
    dashboard = dashboard_of(request)
    session = session_of(dashboard, request)
    if user_of(dashboard, session) is not None:
        return redirect("/")
    if session is None:
        session = dashboard.sessions.new()
    response = render(dashboard, "signin.html", session=session, name="", error="")
    response.headers.append("set-cookie", dashboard.sessions.cookie_header(session))
    return response


async def signin(request: Request) -> Response:
    dashboard = dashboard_of(request)
    session = session_of(dashboard, request)
    try:
        form: Form | None = await read_form(request)
    except FormError:
        form = None
    if session is None or form is None or not session.csrf_matches(form.get(CSRF_FIELD)):
        return error_page(dashboard, 403, "Refused", CSRF_TEXT)
    name = form.get("name").strip()
    password = form.get("password")
    throttle_key = name[:64]
    if dashboard.throttle.blocked(throttle_key):
        log.warning("sign-in refused unchecked: too many failures for that name")
        return render(
            dashboard, "signin.html", status=429, session=session, name=name, error=THROTTLED
        )
    user = None
    if NAME_PATTERN.fullmatch(name) and password:
        user = await run_in_threadpool(dashboard.users.authenticate, name, password)
    else:
        # Costs what a real check does, so that its time says nothing either.
        await run_in_threadpool(dashboard.users.authenticate, "", password)
    if user is None:
        dashboard.throttle.failed(throttle_key)
        # Only a real user's name is logged: people type their password into the name field.
        known = NAME_PATTERN.fullmatch(name) and dashboard.users.get(name) is not None
        log.info("failed sign-in as %s", name if known else "a name nobody has")
        return render(
            dashboard, "signin.html", status=401, session=session, name=name, error=WRONG_SIGN_IN
        )
    dashboard.throttle.succeeded(throttle_key)
    log.info("%s signed in", user.name)
    # A new session, and a new CSRF token, for the signed-in user.
    signed_in = dashboard.sessions.new(user.name, user.password_hash)
    return redirect("/", session_cookie=dashboard.sessions.cookie_header(signed_in))


async def signout(visit: Visit) -> Response:
    log.info("%s signed out", visit.user.name)
    visit.dashboard.sessions.end(visit.session)
    return redirect("/signin", session_cookie=visit.dashboard.sessions.cookie_header(None))


# -- accounts ------------------------------------------------------------------------------


async def home(visit: Visit) -> Response:
    return visit.render("home.html", user=visit.user, open_account="", error="")


async def open_account(visit: Visit) -> Response:
    """The "Open" form of a user with every account: to that account's keys."""
    account = visit.request.query_params.get("account", "").strip()
    if not ACCOUNT_PATTERN.fullmatch(account):
        error = (
            "Account: 1 to 64 letters, digits, '_', '-', '.' or ':', starting with a letter"
            " or digit"
        )
        return visit.render(
            "home.html", status=400, user=visit.user, open_account=account, error=error
        )
    if not visit.user.may_open(account):
        return visit.error(404, "Not found", NOT_FOUND_TEXT)
    return redirect(f"/accounts/{account}/keys")
