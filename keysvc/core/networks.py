"""Allowed IPs: the addresses and CIDR ranges a key may be used from, and the check of a
request's client address against them. Pure functions, no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from keysvc.core.errors import InvalidArgument

Network = IPv4Network | IPv6Network

MAX_ALLOWED_IPS = 100


def normalized(values: Iterable[str], field: str = "allowed_ips") -> tuple[str, ...]:
    """The entries as keysvc stores them: each an address ("203.0.113.7", "2001:db8::1") or a
    range ("10.0.0.0/8"), in canonical form, duplicates folded, sorted by version and address.
    Raises InvalidArgument naming the entry that is not one."""
    found: dict[Network, None] = {}
    for index, value in enumerate(values):
        text = value.strip()
        if not text:
            raise InvalidArgument(f"{field}[{index}]: empty; give an address or a CIDR range")
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise InvalidArgument(
                    f"{field}[{index}]: {text[:64]!r} is not an IP address or CIDR range"
                    " (e.g. 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)"
                ) from None
            raise InvalidArgument(
                f"{field}[{index}]: {text[:64]!r} has host bits set; did you mean {loose}?"
            ) from None
        if "%" in text:
            raise InvalidArgument(
                f"{field}[{index}]: {text[:64]!r} names an interface (a zone): give the address"
                " or range alone"
            )
        mapped = _ipv4_mapped(network)
        if mapped is not None:
            # Client addresses are compared as IPv4 (client_address): say so, rather than
            # store an entry that could never match.
            raise InvalidArgument(
                f"{field}[{index}]: {text[:64]!r} is an IPv4 address mapped into IPv6; write it"
                f" as IPv4: {_text(mapped)}"
            )
        found[network] = None
    if len(found) > MAX_ALLOWED_IPS:
        raise InvalidArgument(f"{field}: at most {MAX_ALLOWED_IPS} entries, got {len(found)}")
    ordered = sorted(found, key=lambda n: (n.version, n.network_address, n.prefixlen))
    return tuple(_text(network) for network in ordered)


def _text(network: Network) -> str:
    # A single address reads as itself, not as a /32 or /128 range.
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _ipv4_mapped(network: Network) -> IPv4Network | None:
    """The IPv4 range an IPv6 range of mapped addresses (::ffff:0:0/96 and within) stands for."""
    if not isinstance(network, IPv6Network) or network.prefixlen < 96:
        return None
    first = network.network_address.ipv4_mapped
    if first is None:
        return None
    return IPv4Network(f"{first}/{network.prefixlen - 96}")


def parsed(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks of entries that `normalized` produced."""
    return tuple(ipaddress.ip_network(value) for value in values)


def allows(allowed: tuple[Network, ...], client_ip: str) -> bool:
    """Whether a request from `client_ip` may use a key restricted to `allowed` (which must
    not be empty). A missing or unparseable address is refused: fail closed."""
    address = client_address(client_ip)
    if address is None:
        return False
    return any(address in network for network in allowed)


def client_address(value: str) -> IPv4Address | IPv6Address | None:
    """The address in an AuthorizeRequest's client_ip; an IPv4 address mapped into IPv6
    (::ffff:203.0.113.7, as dual-stack sockets report it) counts as the IPv4 address."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
