"""What every page shares: the signed-in visit, forms and their CSRF tokens, rendering, error
pages, and the security headers on every response."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs

import grpc
import jinja2
from keysvc_client import (
    FailedPrecondition,
    InvalidArgument,
    KeyServiceClient,
    KeysvcError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keysvc.dashboard.client import Keysvc
from keysvc.dashboard.limits import OnceTokens, SignInThrottle
from keysvc.dashboard.sessions import COOKIE_NAME, Session, Sessions, fingerprint
from keysvc.dashboard.users import ACCOUNT_PATTERN, User, UsersFile

__all__ = [
    "CSRF_FIELD",
    "Dashboard",
    "Form",
    "FormError",
    "SecurityHeaders",
    "Visit",
    "account_page",
    "error_page",
    "render",
    "signed_in_page",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024

UNAVAILABLE_TEXT = "keysvc is not answering; try again in a moment"
CSRF_TEXT = "This form has expired or was not sent by this dashboard"
NOT_FOUND_TEXT = "There is no such page, account or key here."

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds the security headers to every response, and `Cache-Control: no-store` to every
    page (not to static files): pages show keys, and one shows a secret."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in {h for h, _ in _HEADERS}
                ]
                headers.extend(_HEADERS)
                if not static and not any(n.lower() == b"cache-control" for n, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Dashboard:
    """The application's state: how it reaches keysvc, who may sign in, and its sessions."""

    keysvc: Keysvc
    users: UsersFile
    sessions: Sessions
    templates: jinja2.Environment
    throttle: SignInThrottle = field(default_factory=SignInThrottle)
    once: OnceTokens = field(default_factory=OnceTokens)


class Form:
    """A posted application/x-www-form-urlencoded form."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str) -> str:
        values = self._fields.get(name)
        return values[0] if values else ""

    def getlist(self, name: str) -> list[str]:
        return list(self._fields.get(name, []))


class FormError(Exception):
    """A posted form the dashboard will not read: too large, or not text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


async def read_form(request: Request) -> Form:
    """The posted form; only URL-encoded forms of at most 64 KiB are taken."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return Form({})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, "This form is too large.")
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=500)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "This form could not be read.") from None
    return Form(fields)


def render(
    dashboard: Dashboard,
    template: str,
    *,
    status: int = 200,
    session: Session | None = None,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    context.setdefault("account", "")
    page = dashboard.templates.get_template(template).render(
        csrf_field=CSRF_FIELD,
        csrf_token=session.csrf_token if session else "",
        signed_in=session.user if session else None,
        **context,
    )
    return HTMLResponse(page, status_code=status, headers=dict(headers or {}))


def error_page(
    dashboard: Dashboard,
    status: int,
    title: str,
    text: str,
    session: Session | None = None,
) -> HTMLResponse:
    return render(dashboard, "error.html", status=status, session=session, title=title, text=text)


def not_found(dashboard: Dashboard, session: Session | None) -> HTMLResponse:
    return error_page(dashboard, 404, "Not found", NOT_FOUND_TEXT, session)


def redirect(url: str, *, session_cookie: str | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if session_cookie is not None:
        response.headers.append("set-cookie", session_cookie)
    return response


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def session_of(dashboard: Dashboard, request: Request) -> Session | None:
    return dashboard.sessions.load(request.cookies.get(COOKIE_NAME))


def user_of(dashboard: Dashboard, session: Session | None) -> User | None:
    """The signed-in user, if the session is one and the user still has that password."""
    if session is None or session.user is None:
        return None
    user = dashboard.users.get(session.user)
    if user is None:
        return None
    if not secrets.compare_digest(fingerprint(user.password_hash), session.password):
        return None
    return user


@dataclass
class Visit:
    """One request of a signed-in user: who, which account (if the page is an account's), the
    posted form, and how to call keysvc on their behalf and answer."""

    request: Request
    dashboard: Dashboard
    session: Session
    user: User
    account: str = ""
    form: Form = field(default_factory=lambda: Form({}))
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def keysvc(self, call: Callable[[KeyServiceClient], T]) -> T:
        return await self.dashboard.keysvc.call(self.user.name, call)

    def render(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        return render(
            self.dashboard,
            template,
            status=status,
            session=self.session,
            account=self.account,
            now=self.now,
            **context,
        )

    def error(self, status: int, title: str, text: str) -> HTMLResponse:
        return error_page(self.dashboard, status, title, text, self.session)


Handler = Callable[[Visit], Awaitable[Response]]


def _keysvc_failure(visit: Visit, err: KeysvcError) -> Response:
    """The page for a keysvc call that failed and that the page itself did not answer."""
    request = visit.request
    if isinstance(err, NotFound) or (
        isinstance(err, InvalidArgument) and err.details.startswith("id:")
    ):
        return not_found(visit.dashboard, visit.session)
    if isinstance(err, Unavailable) or err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        log.warning("%s %s: keysvc unavailable: %s", request.method, request.url.path, err.code)
        return visit.error(503, "keysvc is not answering", UNAVAILABLE_TEXT)
    if isinstance(err, Unauthenticated | PermissionDenied):
        log.error(
            "%s %s: keysvc refused the dashboard's credential: %s: %s",
            request.method,
            request.url.path,
            err.code.name,
            err.details,
        )
        return visit.error(
            502,
            "keysvc refused the dashboard",
            "keysvc refused the dashboard's own credential; an operator must fix its"
            " configuration.",
        )
    if isinstance(err, InvalidArgument):
        return visit.error(400, "Bad request", err.details)
    if isinstance(err, FailedPrecondition):
        return visit.error(409, "Not possible", err.details)
    log.error("%s %s: keysvc: %s: %s", request.method, request.url.path, err.code, err.details)
    return visit.error(502, "keysvc failed", f"keysvc could not do this: {err.code.name}.")


def signed_in_page(
    handler: Handler, *, account: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """`handler` behind the dashboard's checks: signed in (else to /signin), the account one
    the user may open (else 404, as for a missing key), a POST's CSRF token (else 403), and
    keysvc's failures turned into pages, never a traceback."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        dashboard = dashboard_of(request)
        session = session_of(dashboard, request)
        user = user_of(dashboard, session)
        if session is None or user is None:
            return redirect("/signin")
        visit = Visit(request, dashboard, session, user)
        if account:
            visit.account = request.path_params["account"]
            if not ACCOUNT_PATTERN.fullmatch(visit.account) or not user.may_open(visit.account):
                return not_found(dashboard, session)
        if request.method == "POST":
            try:
                visit.form = await read_form(request)
            except FormError as err:
                return visit.error(err.status, "Bad request", err.text)
            if not session.csrf_matches(visit.form.get(CSRF_FIELD)):
                return visit.error(403, "Refused", CSRF_TEXT)
        try:
            return await handler(visit)
        except KeysvcError as err:
            return _keysvc_failure(visit, err)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return visit.error(
                500, "Something went wrong", "The dashboard failed to show this page; it is logged."
            )

    return endpoint


def account_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """signed_in_page for the pages of one account (`{account}` in the path)."""
    return signed_in_page(handler, account=True)
