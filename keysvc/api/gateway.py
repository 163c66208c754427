"""The gateway decision: may this HTTP request, seen by a gateway in front of the API servers,
reach them? Shared by every gateway protocol keysvc speaks (Envoy's ext_authz in
keysvc.api.envoy, HTTP forward-auth for NGINX, Traefik and Caddy).

    routes = load_routes(Path("gateway-routes.toml"))      # at start: StartupError naming the line
    gateway = Gateway(routes, authorizer, transport="envoy")
    answer = await gateway.decide("GET", "/api/v1/links?limit=3", "Bearer ck_…", "203.0.113.7")
    answer.status            # 200, 401, 403, 404 (no line declares the route), 503 (cannot decide)
    answer.upstream_headers  # on 200: x-keysvc-key-id, -account-id, -mode, -scopes
    answer.headers, answer.body   # on a refusal: WWW-Authenticate / Retry-After, the JSON error

The route file is the table KeysvcMiddleware takes, in TOML, one line per route:

    "GET /api/v1/links" = "links:read"
    "GET /api/v1/links/{link_id}" = "links:read"
    "GET /api/v1/links/export" = ["links:read", "customers:read"]
    "GET /api/v1/me" = []                                  # any valid key

A gateway cannot see the upstream's routes, so a request is held to every line whose method
and path template match it (Starlette's path syntax, a GET line covering HEAD), needing the
scopes of all of them, as the middleware does for an app whose routes it cannot see:
overlapping lines never weaken a route. A request no line matches is refused with 404
`not_found` and never reaches the upstream; so is a path the upstream might read differently
from the gateway (an encoded slash or backslash, a `.` or `..` segment, a control character).
Refusals and identity headers are the Guard's own (keysvc_client's Verdict), so an API behind a
gateway answers exactly as one protected by the Guard.
"""

from __future__ import annotations

import json
import logging
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from keysvc_client._guard_common import (
    KeyContext,
    Verdict,
    client_ip_field,
    from_response,
    scope_list,
    settings,
    unavailable,
)
from keysvc_client.integrations._routes import template_key
from starlette.routing import compile_path

from keysvc.api import convert
from keysvc.core import scopes as catalogue
from keysvc.core.errors import StartupError, Unavailable
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.usecases.authorize import Authorizer

__all__ = [
    "IDENTITY_HEADERS",
    "IDENTITY_PREFIX",
    "METHODS",
    "Gateway",
    "GatewayAnswer",
    "Route",
    "RouteTable",
    "load_routes",
    "parse_routes",
]

log = logging.getLogger(__name__)

IDENTITY_PREFIX: Final = "x-keysvc-"
"""Every identity header starts with it. A gateway removes each header with this prefix that the
client sent, so that the upstream believes only keysvc's."""

KEY_ID_HEADER: Final = "x-keysvc-key-id"
ACCOUNT_ID_HEADER: Final = "x-keysvc-account-id"
MODE_HEADER: Final = "x-keysvc-mode"
SCOPES_HEADER: Final = "x-keysvc-scopes"
IDENTITY_HEADERS: Final = (KEY_ID_HEADER, ACCOUNT_ID_HEADER, MODE_HEADER, SCOPES_HEADER)

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods a line may declare (KeysvcMiddleware's); a GET line covers HEAD."""

REALM: Final = "api"

# The Guard's own mapping of keysvc's answer, with its defaults: no required mode, 503 when
# keysvc cannot decide, the realm "api".
_VERDICTS = settings(
    timeout=1.0, required_mode=None, unavailable_status=503, realm=REALM, max_attempts=1
)

# Characters a path may not hold once decoded: a router may split, strip or reject them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Encoded "/" and "\": the gateway and the upstream may disagree on where segments end.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)

_MAX_PATH = 8 * 1024


@dataclass(frozen=True, slots=True)
class Route:
    """One line of the route file: a method and a path template, and the scopes it needs."""

    method: str
    template: str
    scopes: tuple[str, ...]
    line: int = 0
    pattern: re.Pattern[str] = field(
        default_factory=lambda: re.compile("^$"), repr=False, compare=False
    )

    def matches(self, method: str, path: str) -> bool:
        return (self.method == method or (method == "HEAD" and self.method == "GET")) and (
            self.pattern.match(path) is not None
        )


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes a gateway lets through, each with the scopes it needs."""

    routes: tuple[Route, ...]
    source: str = "<routes>"

    def required(self, method: str, path: str) -> tuple[str, ...] | None:
        """The scopes a request needs: those of every line matching it, in file order, or None
        when no line does (the request is refused). `path` is decoded, without its query."""
        found: dict[str, None] | None = None
        for route in self.routes:
            if route.matches(method, path):
                found = found if found is not None else {}
                found.update(dict.fromkeys(route.scopes))
        return None if found is None else tuple(found)

    def __len__(self) -> int:
        return len(self.routes)


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """What a gateway does with one request.

    `status` 200: let it through with `upstream_headers` added (each of IDENTITY_HEADERS).
    401 or 403: the key was refused; 404: no line declares the route; 503: keysvc cannot decide
    (a backend is down: the gateway must answer with a server error, and never let the request
    through). Every refusal comes with `headers` for the client (`WWW-Authenticate` on 401 and
    403, `Retry-After` on 503, `Cache-Control: no-store`, `Content-Type`) and a JSON `body`:
    {"error": {"status", "reason", "message", ...}}, as the Guard answers.
    """

    status: int
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    key: KeyContext | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200 and self.key is not None

    @property
    def unavailable(self) -> bool:
        """keysvc could not decide: neither an allow nor a refusal of the key."""
        return self.status >= 500


class Gateway:
    """Decides gateway requests with the route table and the Authorizer, as Authorize would."""

    def __init__(
        self,
        routes: RouteTable,
        authorizer: Authorizer,
        *,
        transport: str = "gateway",
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.routes = routes
        self._authorizer = authorizer
        self._transport = transport
        self._metrics = metrics

    async def decide(
        self, method: str, path: str, authorization: str | None, client_ip: str | None
    ) -> GatewayAnswer:
        """The answer for a request with this method, path (its query string, if any, is
        ignored), Authorization header (None when it had none; several values joined with
        ", ", which keysvc refuses as malformed) and client address (None when unknown: a
        key restricted to allowed IPs is then refused).

        Never raises for keysvc's sake: when it cannot decide the answer is 503.
        """
        decoded = request_path(path)
        required = None if decoded is None else self.routes.required(method, decoded)
        if required is None:
            # What came from outside is logged with repr: an encoded newline forges no line.
            log.info(
                "%r %r: no line of %s declares it: 404", method, path[:256], self.routes.source
            )
            return no_route()
        started = time.perf_counter()
        try:
            decision = await self._authorizer.authorize(
                authorization or "", required, None, client_ip_field(client_ip)
            )
        except Unavailable as err:
            self._metrics.decision("unavailable", time.perf_counter() - started, **self._label)
            log.warning("cannot decide %r %r (%s): 503", method, path[:256], err)
            return answer(unavailable(required, _VERDICTS))
        except Exception:
            # A bug is no reason to let a request through: the gateway answers 503.
            self._metrics.decision("unavailable", time.perf_counter() - started, **self._label)
            log.exception("deciding %r %r failed: 503", method, path[:256])
            return answer(unavailable(required, _VERDICTS))
        self._metrics.decision(decision.reason.name, time.perf_counter() - started, **self._label)
        return answer(from_response(convert.decision_to_pb(decision), required, _VERDICTS))

    @property
    def _label(self) -> dict[str, str]:
        return {"transport": self._transport}


def answer(verdict: Verdict) -> GatewayAnswer:
    """The gateway's answer for one of the Guard's verdicts."""
    if verdict.allowed:
        assert verdict.key is not None
        return GatewayAnswer(
            status=200,
            reason=verdict.reason,
            upstream_headers=identity_headers(verdict.key),
            key=verdict.key,
        )
    if verdict.status not in (401, 403):
        # Anything but a refusal of the key is a failure to decide: 503, never a pass.
        verdict = unavailable(verdict.required_scopes, _VERDICTS)
    return _refusal(verdict.status, verdict.reason, verdict.error_body(), verdict.headers(REALM))


def no_route() -> GatewayAnswer:
    """No line declares the request's route: 404, as KeysvcMiddleware answers."""
    body = {"error": {"status": 404, "reason": "not_found", "message": "no such route"}}
    return _refusal(404, "not_found", body, {"Cache-Control": "no-store"})


def _refusal(
    status: int, reason: str, body: Mapping[str, object], headers: Mapping[str, str]
) -> GatewayAnswer:
    return GatewayAnswer(
        status=status,
        reason=reason,
        headers={**headers, "Content-Type": "application/json"},
        body=json.dumps(body, separators=(",", ":")).encode(),
    )


def identity_headers(key: KeyContext) -> dict[str, str]:
    """The headers the upstream gets with an allowed request; the key itself is never among
    them."""
    return {
        KEY_ID_HEADER: key.key_id,
        ACCOUNT_ID_HEADER: key.account_id,
        MODE_HEADER: key.mode,
        SCOPES_HEADER: " ".join(key.scopes),
    }


def request_path(path: str) -> str | None:
    """The path as a router matches it: query and fragment dropped, percent-decoded. None
    for a path the gateway and the upstream might read differently, which is refused."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or len(path) > _MAX_PATH or _ENCODED_SEPARATOR.search(path):
        return None
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        return None
    if "\\" in decoded or _CONTROL.search(decoded):
        return None
    if any(segment in (".", "..") for segment in decoded.split("/")):
        return None
    return decoded


# -- the route file -----------------------------------------------------------------------


def load_routes(path: Path) -> RouteTable:
    """The route table in `path` (TOML); StartupError naming the file and line of any mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StartupError(f"gateway routes {path}: cannot read it: {err}") from err
    return parse_routes(text, source=str(path))


def parse_routes(text: str, *, source: str = "<routes>") -> RouteTable:
    """The route table written in `text`: `"METHOD /path" = "scope"` or `= ["scope", ...]`,
    one per line. Raises StartupError naming `source` and the line of the first mistake: not
    TOML, not a method and a path, a scope keysvc does not know, a route declared twice."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StartupError(f"gateway routes {source}: {err}") from err
    lines = text.splitlines()
    routes: list[Route] = []
    seen: dict[tuple[str, str], int] = {}
    for entry, value in document.items():
        number = _line_of(entry, lines)

        def fail(problem: str, number: int = number, entry: str = entry) -> StartupError:
            where = f"line {number}" if number else f"{entry!r}"
            return StartupError(f"gateway routes {source}, {where}: {problem}")

        method, _, template = entry.partition(" ")
        method, template = method.upper(), template.strip()
        if method not in METHODS or not template.startswith("/") or "?" in template:
            raise fail(
                f"{entry!r} is not 'METHOD /path' (e.g. \"GET /api/v1/links\"; methods"
                f" {', '.join(sorted(METHODS))})"
            )
        if not isinstance(value, str | list):
            raise fail(
                f'{entry!r} = {value!r}: give a scope ("links:read") or a list of scopes'
                " ([] for any valid key)"
            )
        try:
            scopes = scope_list(value)
        except (TypeError, ValueError) as err:
            raise fail(f"{entry!r}: {err}") from None
        unknown = [scope for scope in scopes if scope not in catalogue.CATALOGUE]
        if unknown:
            raise fail(
                f"{entry!r}: unknown scope{'s' if len(unknown) > 1 else ''}"
                f" {', '.join(unknown)}; valid scopes are {', '.join(catalogue.CATALOGUE)}"
            )
        try:
            pattern = compile_path(template)[0]
        except (ValueError, AssertionError, KeyError) as err:
            raise fail(f"{entry!r}: not a path template: {err}") from None
        same = (method, template_key(template))
        if same in seen:
            raise fail(f"{entry!r} declares the route of line {seen[same]} again")
        seen[same] = number
        routes.append(Route(method, template, scopes, number, pattern))
    if not routes:
        raise StartupError(f"gateway routes {source}: no routes: every request would be 404")
    return RouteTable(tuple(routes), source)


def _line_of(entry: str, lines: Iterable[str]) -> int:
    """The number of the line that declares `entry`, 0 when it cannot be told (an escaped key)."""
    quoted = (json.dumps(entry), f"'{entry}'")
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith(quoted):
            return number
    return 0
