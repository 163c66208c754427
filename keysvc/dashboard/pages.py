"""An account's pages: API Keys, create, revoke, roll, edit, and the audit trail.

Each handler gets a Visit (web.py has already checked the session, the account and the CSRF
token) and answers with a page or a redirect. A raw key is only ever in the body of the one
response that made it: never in a URL, a redirect, the session or a log line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlencode

from keysvc_client import FailedPrecondition, InvalidArgument, keysvc_pb2
from starlette.responses import Response

from keysvc.dashboard import display
from keysvc.dashboard.web import (
    Visit,
    redirect,
)

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 50
NO_STORE: Final = {"Cache-Control": "no-store"}

MODES = (("", "All"), ("live", "Live"), ("test", "Test"))
STATUSES = (("", "All"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked"))
GRACE_PERIODS = (
    (0, "None — revoke now"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
)
DEFAULT_GRACE = 86400

# keysvc names the field first in its INVALID_ARGUMENT messages ("allowed_ips[2]: ...").
_FIELDS = {
    "name": "name",
    "mode": "mode",
    "scopes": "scopes",
    "allowed_ips": "allowed_ips",
    "expire_time": "expires",
    "reason": "reason",
    "grace": "grace",
}
_INDEX = re.compile(r"\[\d+\]$")


def field_of(details: str) -> str:
    """The form field a keysvc message is about ("form" when none)."""
    head = _INDEX.sub("", details.split(":", 1)[0].strip())
    return _FIELDS.get(head, "form")


# -- the API Keys page ---------------------------------------------------------------------


def _choice(value: str, choices: tuple[tuple[str, str], ...]) -> str:
    return value if value in {v for v, _ in choices} else ""


async def keys_page(visit: Visit) -> Response:
    query = visit.request.query_params
    mode = _choice(query.get("mode", ""), MODES)
    status = _choice(query.get("status", ""), STATUSES)
    page_token = query.get("page_token", "")
    page = await visit.keysvc(
        lambda client: client.list_keys(
            visit.account,
            page_size=PAGE_SIZE,
            page_token=page_token,
            mode=mode or None,
            status=status or None,
        )
    )
    filters = {k: v for k, v in (("mode", mode), ("status", status)) if v}
    next_page = ""
    if page.next_page_token:
        next_page = "?" + urlencode({**filters, "page_token": page.next_page_token})
    first_page = ("?" + urlencode(filters) if filters else "?") if page_token else ""
    return visit.render(
        "keys.html",
        keys=[display.key_view(key, visit.now) for key in page.keys],
        mode_filter=mode,
        status_filter=status,
        modes=MODES,
        statuses=STATUSES,
        next_page=next_page,
        first_page=first_page,
        notice=_notice(visit),
    )


# -- create --------------------------------------------------------------------------------


@dataclass
class KeyInput:
    """What the create and edit forms hold, as the user typed it."""

    name: str = ""
    mode: str = "test"
    scopes: tuple[str, ...] = ()
    expires: str = ""
    allowed_ips: str = ""
    once: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        return [line.strip() for line in self.allowed_ips.splitlines() if line.strip()]


def parse_expiry(text: str) -> datetime | None:
    """The form's Expires: a date (the key stops at 00:00 UTC that day) or a date and time,
    in UTC; None when empty. ValueError when it is neither."""
    text = text.strip()
    if not text:
        return None
    for pattern in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(text)


async def _scopes(visit: Visit) -> list[keysvc_pb2.Scope]:
    return await visit.keysvc(lambda client: client.list_scopes())


async def _key_form(visit: Visit, entered: KeyInput, *, status: int = 200) -> Response:
    if not entered.once:
        entered.once = visit.dashboard.once.new()
    return visit.render(
        "new_key.html",
        status=status,
        entered=entered,
        scopes=await _scopes(visit),
        notice=_notice(visit),
    )


async def new_key_form(visit: Visit) -> Response:
    return await _key_form(visit, KeyInput())


def _secret_page(
    visit: Visit,
    *,
    heading: str,
    key: keysvc_pb2.Key,
    secret: str,
    rolled: keysvc_pb2.Key | None = None,
) -> Response:
    response = visit.render(
        "secret.html",
        title=heading,
        key=display.key_view(key, visit.now),
        secret=secret,
        rolled=None if rolled is None else display.key_view(rolled, visit.now),
    )
    response.headers.update(NO_STORE)
    return response


ALREADY_SENT = (
    "That form was already sent: the key it made was shown once and is not shown again. Find"
    " it in the API Keys list."
)


def _already_sent(path: str) -> Response:
    """The answer to a create or roll form posted again (a reload of the page that showed the
    key, a double click): no new key, and a plain GET to come back to, saying why."""
    return redirect(f"{path}?sent=again")


def _notice(visit: Visit) -> str:
    return ALREADY_SENT if visit.request.query_params.get("sent") == "again" else ""


async def create_key(visit: Visit) -> Response:
    form = visit.form
    entered = KeyInput(
        name=form.get("name").strip(),
        mode=form.get("mode"),
        scopes=tuple(form.getlist("scopes")),
        expires=form.get("expires"),
        allowed_ips=form.get("allowed_ips"),
        once=form.get("once"),
    )
    if entered.mode not in ("live", "test"):
        entered.errors["mode"] = "Choose Live or Test."
    try:
        expire_time = parse_expiry(entered.expires)
    except ValueError:
        entered.errors["expires"] = "Enter a date such as 2027-03-01."
        expire_time = None
    if entered.errors:
        return await _key_form(visit, entered, status=400)
    if not visit.dashboard.once.claim(entered.once):
        return _already_sent(f"/accounts/{visit.account}/keys/new")
    try:
        created = await visit.keysvc(
            lambda client: client.create_key(
                visit.account,
                entered.name,
                entered.mode,
                entered.scopes,
                expire_time=expire_time,
                allowed_ips=entered.addresses,
            )
        )
    except InvalidArgument as err:
        visit.dashboard.once.release(entered.once)
        entered.errors[field_of(err.details)] = err.details
        return await _key_form(visit, entered, status=400)
    except BaseException:
        visit.dashboard.once.release(entered.once)
        raise
    log.info(
        "%s created %s key %s in account %s",
        visit.user.name,
        display.mode(created.key.mode),
        created.key.id,
        visit.account,
    )
    return _secret_page(visit, heading="Key created", key=created.key, secret=created.secret)


# -- revoke, roll, edit --------------------------------------------------------------------


def _key_id(visit: Visit) -> str:
    key_id: str = visit.request.path_params["key_id"]
    return key_id


async def _usable_key(visit: Visit) -> keysvc_pb2.Key | Response:
    """The key of the URL, or the page saying it can no longer be changed."""
    key = await visit.keysvc(lambda client: client.get_key(visit.account, _key_id(visit)))
    if not display.is_usable(key):
        view = display.key_view(key, visit.now)
        return visit.error(
            409,
            "Not possible",
            f"Key {key.name} ({key.prefix}) is {view.status}: it cannot change.",
        )
    return key


async def revoke_form(visit: Visit) -> Response:
    key = await _usable_key(visit)
    if isinstance(key, Response):
        return key
    return visit.render("revoke.html", key=display.key_view(key, visit.now), reason="", error="")


async def revoke_key(visit: Visit) -> Response:
    reason = visit.form.get("reason").strip()
    try:
        key = await visit.keysvc(
            lambda client: client.revoke_key(visit.account, _key_id(visit), reason=reason)
        )
    except InvalidArgument as err:
        if field_of(err.details) != "reason":
            raise
        current = await visit.keysvc(lambda client: client.get_key(visit.account, _key_id(visit)))
        return visit.render(
            "revoke.html",
            status=400,
            key=display.key_view(current, visit.now),
            reason=reason,
            error=err.details,
        )
    log.info("%s revoked key %s in account %s", visit.user.name, key.id, visit.account)
    return redirect(f"/accounts/{visit.account}/keys")


async def roll_form(visit: Visit) -> Response:
    key = await _usable_key(visit)
    if isinstance(key, Response):
        return key
    return visit.render(
        "roll.html",
        key=display.key_view(key, visit.now),
        graces=GRACE_PERIODS,
        grace=DEFAULT_GRACE,
        once=visit.dashboard.once.new(),
        error="",
    )


async def roll_key(visit: Visit) -> Response:
    choices = {seconds for seconds, _ in GRACE_PERIODS}
    try:
        grace = int(visit.form.get("grace"))
    except ValueError:
        grace = -1
    once = visit.form.get("once")

    async def again(error: str) -> Response:
        current = await visit.keysvc(lambda client: client.get_key(visit.account, _key_id(visit)))
        return visit.render(
            "roll.html",
            status=400,
            key=display.key_view(current, visit.now),
            graces=GRACE_PERIODS,
            grace=grace if grace in choices else DEFAULT_GRACE,
            once=once or visit.dashboard.once.new(),
            error=error,
        )

    if grace not in choices:
        return await again("Choose a grace period.")
    if not visit.dashboard.once.claim(once):
        return _already_sent(f"/accounts/{visit.account}/keys")
    try:
        rolled = await visit.keysvc(
            lambda client: client.roll_key(
                visit.account, _key_id(visit), grace=timedelta(seconds=grace)
            )
        )
    except (InvalidArgument, FailedPrecondition) as err:
        visit.dashboard.once.release(once)
        if isinstance(err, InvalidArgument) and field_of(err.details) == "form":
            raise
        return await again(err.details)
    except BaseException:
        visit.dashboard.once.release(once)
        raise
    log.info(
        "%s rolled key %s into %s in account %s",
        visit.user.name,
        rolled.rolled.id,
        rolled.key.id,
        visit.account,
    )
    return _secret_page(
        visit, heading="Key rolled", key=rolled.key, secret=rolled.secret, rolled=rolled.rolled
    )


async def _edit_form(
    visit: Visit, key: keysvc_pb2.Key, entered: KeyInput, *, status: int = 200
) -> Response:
    return visit.render(
        "edit.html",
        status=status,
        key=display.key_view(key, visit.now),
        entered=entered,
        scopes=await _scopes(visit),
    )


async def edit_form(visit: Visit) -> Response:
    key = await _usable_key(visit)
    if isinstance(key, Response):
        return key
    entered = KeyInput(
        name=key.name, scopes=tuple(key.scopes), allowed_ips="\n".join(key.allowed_ips)
    )
    return await _edit_form(visit, key, entered)


async def edit_key(visit: Visit) -> Response:
    form = visit.form
    entered = KeyInput(
        name=form.get("name").strip(),
        scopes=tuple(form.getlist("scopes")),
        allowed_ips=form.get("allowed_ips"),
    )
    try:
        key = await visit.keysvc(
            lambda client: client.update_key(
                visit.account,
                _key_id(visit),
                name=entered.name,
                scopes=entered.scopes,
                allowed_ips=entered.addresses,
            )
        )
    except (InvalidArgument, FailedPrecondition) as err:
        if isinstance(err, InvalidArgument) and field_of(err.details) not in _FIELDS.values():
            raise
        current = await visit.keysvc(lambda client: client.get_key(visit.account, _key_id(visit)))
        entered.errors[field_of(err.details)] = err.details
        return await _edit_form(visit, current, entered, status=400)
    log.info("%s updated key %s in account %s", visit.user.name, key.id, visit.account)
    return redirect(f"/accounts/{visit.account}/keys")


# -- audit ---------------------------------------------------------------------------------


async def audit_page(visit: Visit) -> Response:
    page_token = visit.request.query_params.get("page_token", "")
    page = await visit.keysvc(
        lambda client: client.list_audit_events(
            visit.account, page_size=PAGE_SIZE, page_token=page_token
        )
    )
    next_page = (
        "?" + urlencode({"page_token": page.next_page_token}) if page.next_page_token else ""
    )
    return visit.render(
        "audit.html",
        events=[display.event_view(event, visit.now) for event in page.events],
        next_page=next_page,
        first_page="?" if page_token else "",
    )
