"""Where a request came from: the address keysvc checks a key's allowed IPs against.

The immediate peer (the TCP connection's other end) is the client, unless it is one of the
API server's own proxies, named in `trusted_proxies`. Only then is the proxy's header read
(`X-Forwarded-For`, or RFC 7239 `Forwarded`: whichever the proxies set, never both), from the
right: each proxy appends the address it received the request from, so the hops written by
trusted proxies are skipped and the first one that is not a trusted proxy is the client.
Anything left of that was written by the client itself and is never believed.

Whatever cannot be read as an address (`unknown`, an obfuscated `_identifier`, garbage, a
peer that is not an IP socket) gives no address, and keysvc refuses a key restricted to
allowed IPs without one: the uncertain case fails closed.

Nothing here imports a web framework: the integrations hand over their ASGI scope, WSGI
environ or gRPC peer and metadata.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

__all__ = ["IPAddress", "TrustedProxies", "parse_address", "parse_grpc_peer"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ForwardedHeader: TypeAlias = Literal["x-forwarded-for", "forwarded"]
_HEADERS: tuple[ForwardedHeader, ...] = ("x-forwarded-for", "forwarded")

# RFC 9110 §5.6.2: the characters of a token.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'\s*({_TCHARS})=(?:({_TCHARS})|"((?:[^"\\]|\\.)*)")\s*')
_OBFUSCATED_PORT = re.compile(r"_[0-9A-Za-z._-]+")

# No hop list a real chain of proxies writes comes near this; a longer one is not read.
_MAX_HOPS = 64


def parse_address(text: str, *, port: bool = True) -> IPAddress | None:
    """The IP address in `text`: "203.0.113.7", "2001:db8::1", and with `port` also
    "203.0.113.7:4711", "[2001:db8::1]" and "[2001:db8::1]:4711". None for anything else.

    An IPv4-mapped IPv6 address (::ffff:203.0.113.7, what a dual-stack socket reports for an
    IPv4 client) is the IPv4 address it stands for, and an IPv6 zone (fe80::1%eth0) is dropped.
    """
    text = text.strip()
    if port:
        if text.startswith("["):
            end = text.find("]")
            rest = text[end + 1 :] if end > 0 else "?"
            if rest and not (rest[0] == ":" and _is_port(rest[1:])):
                return None
            text = text[1:end]
            if ":" not in text:
                return None  # brackets hold an IPv6 address
        elif text.count(":") == 1:
            text, _, digits = text.partition(":")
            if not _is_port(digits):
                return None
    return _address(text)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _normalized(address)


def _normalized(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def parse_grpc_peer(peer: str | None) -> IPAddress | None:
    """The address in a gRPC peer, as ServicerContext.peer() names it: "ipv4:203.0.113.7:4711",
    "ipv6:[2001:db8::1]:4711" (percent-encoded by recent gRPC). None for "unix:..." and others."""
    if not peer:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    return parse_address(unquote(rest))


def _xff_hops(values: Sequence[str]) -> list[IPAddress | None]:
    """The hops of X-Forwarded-For, leftmost first: addresses, with or without a port."""
    hops: list[IPAddress | None] = []
    for value in values:
        hops.extend(parse_address(item) for item in value.split(","))
    return hops


def _forwarded_hops(values: Sequence[str]) -> list[IPAddress | None]:
    """The `for=` of each element of RFC 7239 Forwarded, leftmost first.

    An element without `for=`, with it twice, or with a pair that does not parse is a hop of
    unknown address (None); so is a header whose quotes do not close, as a whole.
    """
    elements = _split_elements(", ".join(values))
    if elements is None:
        return [None]
    return [_forwarded_for(element) for element in elements]


def _split_elements(value: str) -> list[list[str]] | None:
    """The header's elements, each a list of its `name=value` pairs as written, split at the
    commas and semicolons outside quoted strings; None if a quoted string never closes."""
    elements: list[list[str]] = []
    pairs: list[str] = []
    start = 0
    quoted = escaped = False
    for position, char in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in ",;":
            pairs.append(value[start:position])
            start = position + 1
            if char == ",":
                elements.append(pairs)
                pairs = []
    if quoted:
        return None
    pairs.append(value[start:])
    elements.append(pairs)
    # RFC 9110 §5.6.1: empty list elements are ignored.
    return [element for element in elements if any(pair.strip() for pair in element)]


def _forwarded_for(pairs: list[str]) -> IPAddress | None:
    found: list[str] = []
    for pair in pairs:
        if not pair.strip():
            continue
        match = _PAIR.fullmatch(pair)
        if match is None:
            return None
        name, token, quoted = match.groups()
        if name.lower() == "for":
            found.append(token if token is not None else re.sub(r"\\(.)", r"\1", quoted))
    if len(found) != 1:
        return None
    return _node(found[0])


def _node(node: str) -> IPAddress | None:
    """RFC 7239 §6: an IPv4 address or a bracketed IPv6 one, each with an optional port (a
    number or an obfuscated _port). `unknown` and obfuscated _names are no address."""
    if node.startswith("["):
        end = node.find("]")
        if end < 0:
            return None
        host, rest = node[1:end], node[end + 1 :]
        if ":" not in host:
            return None
    else:
        host, _, port = node.partition(":")
        rest = f":{port}" if port or node.endswith(":") else ""
        if ":" in port or "." not in host:
            return None
    if rest and not (
        rest[0] == ":" and (_is_port(rest[1:]) or _OBFUSCATED_PORT.fullmatch(rest[1:]))
    ):
        return None
    return _address(host)


class TrustedProxies:
    """The API server's own proxies, and the header they name the client in.

    `proxies` are addresses and CIDR ranges ("10.0.0.0/8", "2001:db8::/32", "192.0.2.10").
    Empty (the default), no header is ever read: the immediate peer is the client.
    `header` is the one the proxies set, "x-forwarded-for" (the default) or "forwarded"
    (RFC 7239); the other is ignored, since a proxy passes on whatever the client sent in it.
    """

    def __init__(self, proxies: Iterable[str] = (), header: str = "x-forwarded-for") -> None:
        if isinstance(proxies, str):
            raise TypeError(
                f"trusted_proxies is a list of addresses and ranges, not a single string: "
                f"[{proxies!r}]"
            )
        networks: list[_Network] = []
        for proxy in proxies:
            if not isinstance(proxy, str):
                raise TypeError(f"a trusted proxy is an address or range as text, not {proxy!r}")
            try:
                network = ipaddress.ip_network(proxy.strip())
            except ValueError as err:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or CIDR range ({err})"
                ) from None
            networks.append(network)
        name = header.lower() if isinstance(header, str) else header
        if name not in _HEADERS:
            raise ValueError(
                f"forwarded_header must be 'x-forwarded-for' or 'forwarded', not {header!r}"
            )
        self._networks = tuple(networks)
        self.header: ForwardedHeader = name

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(str(network) for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = _normalized(address)
        return any(address in network for network in self._networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({list(self.networks)!r}, header={self.header!r})"

    def client(self, peer: IPAddress | None, header_values: Sequence[str]) -> IPAddress | None:
        """The client's address, given the immediate peer's and every value of the header.

        Headers count only from a trusted peer. Walking from the right, hops that are trusted
        proxies are skipped; the first that is not is the client. A hop that cannot be read
        ends the walk with no address: whether it was a proxy cannot be known. When every hop
        is a trusted proxy the leftmost is the client (it is one of ours); without the header
        the trusted peer itself is.
        """
        if peer is None or peer not in self:
            return peer
        if not header_values:
            return peer
        if self.header == "forwarded":
            hops = _forwarded_hops(header_values)
        else:
            hops = _xff_hops(header_values)
        if len(hops) > _MAX_HOPS:
            return None
        for hop in reversed(hops):
            if hop is None or hop not in self:
                return hop
        return hops[0] if hops else peer

    def asgi_client(self, scope: Mapping[str, Any]) -> IPAddress | None:
        """The client of an ASGI request: scope["client"], or a trusted proxy's header."""
        client = scope.get("client")
        host = client[0] if isinstance(client, list | tuple) and client else None
        peer = _address(host) if isinstance(host, str) else None
        if peer is None or not self._networks:
            return peer
        wanted = self.header.encode()
        values = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == wanted
        ]
        return self.client(peer, values)

    def wsgi_client(self, environ: Mapping[str, Any]) -> IPAddress | None:
        """The client of a WSGI request: REMOTE_ADDR, or a trusted proxy's header (which the
        WSGI server gives as one value, repeated fields joined by commas)."""
        remote = environ.get("REMOTE_ADDR")
        peer = _address(remote) if isinstance(remote, str) else None
        if peer is None or not self._networks:
            return peer
        value = environ.get("HTTP_" + self.header.upper().replace("-", "_"))
        return self.client(peer, [value] if isinstance(value, str) else [])

    def grpc_client(
        self, peer: str | None, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> IPAddress | None:
        """The client of a gRPC call: the peer, or a trusted proxy's metadata (Envoy and other
        gRPC proxies set x-forwarded-for)."""
        address = parse_grpc_peer(peer)
        if address is None or not self._networks:
            return address
        values = [
            value
            for name, value in metadata or ()
            if name.lower() == self.header and isinstance(value, str)
        ]
        return self.client(address, values)
