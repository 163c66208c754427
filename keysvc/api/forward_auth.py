"""HTTP forward-auth: NGINX's auth_request, Traefik's ForwardAuth and Caddy's forward_auth ask
keysvc whether a request may reach the API servers, before they pass it on.

    <any method> /forward-auth                       no body is read
    X-Original-Method, X-Original-URI                the request to decide on (NGINX), or
    X-Forwarded-Method, X-Forwarded-Uri              the same (Traefik, Caddy): one pair, never both
    Authorization: Bearer ck_live_…                  the client's own, passed on
    X-Forwarded-For, else X-Real-IP                  the client's address

    200  x-keysvc-key-id, -account-id, -mode, -scopes       let it through, with these headers
    401  WWW-Authenticate, JSON body                        no valid key
    403  WWW-Authenticate (missing scope), JSON body        the key may not make this request
    404  JSON body                                          no line of the route table declares it
    503  Retry-After, JSON body                             keysvc cannot decide: refuse it too

The decision is keysvc.api.gateway's, the same as Envoy's ext_authz. Every header above is
believed only from the gateways named in --gateway-trusted-proxies (loopback by default): a
request from any other peer is refused with 403 and decides nothing, since anyone could write
them. A gateway that sends both pairs, a header twice, or neither pair is refused with 403 too:
NGINX passes the client's own headers on in its subrequest, and Traefik by default, so a client
could add a second account of its request, which keysvc will not choose between.

NGINX's auth_request drops the body of a 401 or 403: when the request names itself NGINX's way,
the JSON body also travels in `X-Keysvc-Refusal` for the configuration to answer with
(examples/nginx.conf). No answer or log line holds the key.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from keysvc_client.integrations._client_address import TrustedProxies, parse_address
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from keysvc.api.gateway import Gateway, GatewayAnswer

log = logging.getLogger(__name__)

PATH: Final = "/forward-auth"

# The refusal's JSON body, for a gateway that cannot pass on a body (NGINX's auth_request).
REFUSAL_HEADER: Final = "x-keysvc-refusal"

# Where the proxies say the client is: X-Forwarded-For, read from the right past the trusted
# proxies (keysvc_client's rules); else X-Real-IP, one address the gateway stated.
_FORWARDED_FOR: Final = "x-forwarded-for"
_REAL_IP: Final = "x-real-ip"

# The original request, as each family of gateways names it.
NGINX_HEADERS: Final = ("x-original-method", "x-original-uri")
FORWARDED_HEADERS: Final = ("x-forwarded-method", "x-forwarded-uri")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Original:
    """The request a gateway asks about."""

    method: str
    uri: str
    # Named NGINX's way: its refusal body is repeated in REFUSAL_HEADER.
    nginx: bool


class BadRequest(Exception):
    """A gateway's request that names no single original request."""


def original_request(headers: Headers) -> Original:
    """The method and URI the gateway sent, from one family of headers, each header once."""
    families = [
        names for names in (NGINX_HEADERS, FORWARDED_HEADERS) if any(n in headers for n in names)
    ]
    if len(families) > 1:
        raise BadRequest(
            "both X-Original-* (NGINX) and X-Forwarded-Method/-Uri (Traefik, Caddy) came:"
            " one of them from the client"
        )
    if not families:
        raise BadRequest(
            "no X-Original-Method and X-Original-URI (NGINX), nor X-Forwarded-Method and"
            " X-Forwarded-Uri (Traefik, Caddy): is the gateway configured to send them?"
        )
    values = []
    for name in families[0]:
        found = headers.getlist(name)
        if len(found) != 1 or not found[0].strip():
            raise BadRequest(f"{name}: expected one non-empty value, got {len(found)}")
        values.append(found[0].strip())
    method, uri = values
    return Original(method, uri, nginx=families[0] is NGINX_HEADERS)


def _refusal(status: int, reason: str, message: str, *, nginx: bool) -> Response:
    """A refusal of keysvc's own, in the gateway decision's form."""
    body = json.dumps(
        {"error": {"status": status, "reason": reason, "message": message}}, separators=(",", ":")
    )
    headers = {"Cache-Control": "no-store", "Content-Type": "application/json"}
    if nginx:
        headers[REFUSAL_HEADER] = body
    return Response(body, status_code=status, headers=headers)


class ForwardAuth:
    """The endpoint, an ASGI app answering any method on PATH."""

    def __init__(self, gateway: Gateway, trusted_proxies: Iterable[str]) -> None:
        self._gateway = gateway
        self._proxies = TrustedProxies(list(trusted_proxies), "x-forwarded-for")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        peer = parse_address(request.client.host, port=False) if request.client else None
        nginx = NGINX_HEADERS[1] in request.headers
        if peer is None or peer not in self._proxies:
            log.warning(
                "forward-auth: refused a request from %s, not one of --gateway-trusted-proxies"
                " (%s)",
                peer or "an unknown peer",
                ", ".join(self._proxies.networks),
            )
            return _refusal(
                403,
                "untrusted_proxy",
                "keysvc answers forward-auth requests only from the gateways it trusts",
                nginx=nginx,
            )
        try:
            original = original_request(request.headers)
        except BadRequest as err:
            log.warning("forward-auth: refused a request from %s: %s", peer, err)
            return _refusal(403, "bad_request", f"forward-auth: {err}", nginx=nginx)
        answer = await self._gateway.decide(
            original.method,
            original.uri,
            _authorization(request.headers),
            self._client(peer, request.headers),
        )
        return _response(answer, nginx=original.nginx)

    def _client(self, peer: _Address, headers: Headers) -> str | None:
        """The client's address as the trusted gateway states it; None when it states none
        that can be read (a key restricted to addresses is then refused)."""
        forwarded = headers.getlist(_FORWARDED_FOR)
        if forwarded:
            address = self._proxies.client(peer, forwarded)
        else:
            real = headers.getlist(_REAL_IP)
            address = parse_address(real[0]) if len(real) == 1 else None
        return None if address is None else str(address)


def _authorization(headers: Headers) -> str | None:
    # Two Authorization headers are joined, which keysvc refuses as malformed.
    values = headers.getlist("authorization")
    return ", ".join(values) if values else None


def _response(answer: GatewayAnswer, *, nginx: bool) -> Response:
    if answer.allowed:
        return Response(
            status_code=200, headers={**answer.upstream_headers, "Cache-Control": "no-store"}
        )
    headers = dict(answer.headers)
    if nginx:
        # The body is ASCII JSON on one line (gateway.answer): a header value as it is.
        headers[REFUSAL_HEADER] = answer.body.decode("ascii")
    return Response(answer.body, status_code=answer.status, headers=headers)


def routes(gateway: Gateway, trusted_proxies: Iterable[str]) -> list[Route]:
    """The forward-auth endpoint on PATH, for the HTTP listener's app."""
    return [Route(PATH, ForwardAuth(gateway, trusted_proxies))]
