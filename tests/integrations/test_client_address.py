"""How the integrations find the address a request came from: the immediate peer, or a trusted
proxy's X-Forwarded-For / Forwarded read from the right, and no address when in doubt.

Pure functions over what each server hands over (an ASGI scope, a WSGI environ, a gRPC peer
and metadata): no keysvc needed. test_allowed_ips.py holds the same rules to real servers.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from keysvc_client import keysvc_pb2
from keysvc_client._guard_common import Settings, client_ip_field, from_response
from keysvc_client.integrations._client_address import (
    TrustedProxies,
    parse_address,
    parse_grpc_peer,
)

pb = keysvc_pb2

PROXIES = ["10.0.0.0/8", "192.0.2.10", "2001:db8:ffff::/48"]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def via(
    peer: str | None, *values: str, header: str = "x-forwarded-for", proxies: Any = None
) -> str | None:
    """The client found for a request from `peer` carrying the header's values."""
    trusted = TrustedProxies(PROXIES if proxies is None else proxies, header)
    found = trusted.client(parse_address(peer) if peer else None, list(values))
    return None if found is None else str(found)


class TestParseAddress:
    """An address is read as the servers and proxies write one, and nothing else is."""

    @pytest.mark.parametrize(
        ("text", "address"),
        [
            ("203.0.113.7", "203.0.113.7"),
            (" 203.0.113.7 ", "203.0.113.7"),
            ("203.0.113.7:4711", "203.0.113.7"),
            ("203.0.113.7:65535", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:DB8:0:0::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("::1", "::1"),
            ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack socket's IPv4 client
            ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
            ("fe80::1%eth0", "fe80::1"),  # the zone names an interface of ours, not the client
        ],
    )
    def test_addresses_with_and_without_ports(self, text: str, address: str) -> None:
        assert str(parse_address(text)) == address

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "unknown",
            "_hidden",
            "localhost",
            "example.com",
            "203.0.113",
            "203.0.113.256",
            "203.0.113.7:",
            "203.0.113.7:http",
            "203.0.113.7:123456",
            "203.0.113.7:65536",
            "[2001:db8::1]:99999",
            "[203.0.113.7]",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[2001:db8::1]:",
            "2001:db8::1]:4711",
            "1.2.3.4, 5.6.7.8",
            "1.2.3.4 5.6.7.8",
            "\u0661.2.3.4",  # a non-ASCII digit
        ],
    )
    def test_anything_else_is_no_address(self, text: str) -> None:
        assert parse_address(text) is None

    def test_without_ports_a_port_is_not_an_address(self) -> None:
        assert parse_address("203.0.113.7:80", port=False) is None
        assert parse_address("[::1]", port=False) is None
        assert str(parse_address("::1", port=False)) == "::1"


class TestGrpcPeer:
    """gRPC names the peer "ipv4:host:port" or "ipv6:[host]:port", brackets percent-encoded
    by recent releases; other transports have no address."""

    @pytest.mark.parametrize(
        ("peer", "address"),
        [
            ("ipv4:127.0.0.1:50123", "127.0.0.1"),
            ("ipv4:203.0.113.7:1", "203.0.113.7"),
            ("ipv6:[::1]:50123", "::1"),
            ("ipv6:%5B::1%5D:50123", "::1"),
            ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
            ("ipv6:%5B::ffff:127.0.0.1%5D:443", "127.0.0.1"),
        ],
    )
    def test_ip_peers(self, peer: str, address: str) -> None:
        assert str(parse_grpc_peer(peer)) == address

    @pytest.mark.parametrize(
        "peer",
        [None, "", "unix:/run/api.sock", "unix-abstract:api", "ipv4:", "ipv4:nope:1", "dns:x:1"],
    )
    def test_anything_else_is_no_address(self, peer: str | None) -> None:
        assert parse_grpc_peer(peer) is None


class TestTrustedProxiesConfiguration:
    """Mistakes in the list of proxies fail when the Guard is built, not on a request."""

    def test_none_by_default(self) -> None:
        assert not TrustedProxies()
        assert TrustedProxies().header == "x-forwarded-for"

    @pytest.mark.parametrize("entry", ["10.0.0.0/33", "10.0.0.1/8", "proxy.internal", "", "*"])
    def test_an_entry_that_is_not_an_address_or_range(self, entry: str) -> None:
        with pytest.raises(ValueError, match="trusted_proxies"):
            TrustedProxies([entry])

    def test_a_single_string_is_refused(self) -> None:
        """ "10.0.0.0/8" as the list would otherwise be ten single characters."""
        with pytest.raises(TypeError, match="single string"):
            TrustedProxies("10.0.0.0/8")

    @pytest.mark.parametrize("header", ["x-real-ip", "X-Forwarded-Host", ""])
    def test_only_the_two_forwarding_headers(self, header: str) -> None:
        with pytest.raises(ValueError, match="forwarded_header"):
            TrustedProxies(PROXIES, header)

    def test_header_names_are_case_insensitive(self) -> None:
        assert TrustedProxies(PROXIES, "Forwarded").header == "forwarded"

    def test_membership_takes_addresses_and_ranges_of_both_families(self) -> None:
        trusted = TrustedProxies(PROXIES)
        assert ip("10.1.2.3") in trusted
        assert ip("192.0.2.10") in trusted
        assert ip("192.0.2.11") not in trusted
        assert ip("2001:db8:ffff::5") in trusted
        assert ip("2001:db8:fffe::5") not in trusted
        assert ip("::ffff:10.1.2.3") in trusted  # IPv4-mapped: the IPv4 address it stands for
        assert "10.1.2.3" not in trusted  # only parsed addresses are compared


class TestWithoutTrustedProxies:
    """By default the immediate peer is the client, whatever the headers say."""

    def test_headers_are_never_read(self) -> None:
        assert via("10.0.0.1", "203.0.113.7", proxies=[]) == "10.0.0.1"

    def test_no_peer_is_no_address(self) -> None:
        assert via(None, "203.0.113.7", proxies=[]) is None


class TestXForwardedFor:
    """X-Forwarded-For is read from the right; only hops trusted proxies wrote are believed."""

    def test_the_proxys_peer_is_the_client(self) -> None:
        assert via("10.0.0.1", "203.0.113.7") == "203.0.113.7"

    def test_an_untrusted_peer_is_the_client_whatever_it_sends(self) -> None:
        assert via("198.51.100.9", "203.0.113.7") == "198.51.100.9"
        assert via("198.51.100.9", "10.0.0.1") == "198.51.100.9"
        assert via("198.51.100.9", "garbage") == "198.51.100.9"

    def test_a_spoofed_leftmost_value_never_wins(self) -> None:
        """The client sent X-Forwarded-For: 203.0.113.7 itself; the proxy appended the address
        it really came from."""
        assert via("10.0.0.1", "203.0.113.7, 198.51.100.9") == "198.51.100.9"
        assert via("10.0.0.1", "203.0.113.7", "198.51.100.9") == "198.51.100.9"

    def test_a_chain_of_trusted_proxies_is_skipped(self) -> None:
        assert via("10.0.0.1", "198.51.100.9, 192.0.2.10, 10.9.9.9") == "198.51.100.9"
        assert via("10.0.0.1", "203.0.113.7, 198.51.100.9, 10.2.0.1") == "198.51.100.9"

    def test_a_spoofed_trusted_address_in_the_chain_does_not_help(self) -> None:
        """A client claiming to be one of our proxies is still the first untrusted hop."""
        assert via("10.0.0.1", "203.0.113.7, 10.0.0.7, 198.51.100.9") == "198.51.100.9"

    def test_repeated_header_fields_are_one_list_in_order(self) -> None:
        assert via("10.0.0.1", "203.0.113.7", "198.51.100.9", "10.0.0.3") == "198.51.100.9"

    def test_every_hop_trusted_makes_the_leftmost_the_client(self) -> None:
        """Each hop was written by a trusted proxy: the leftmost is an address of ours."""
        assert via("10.0.0.1", "10.0.0.5, 10.0.0.6") == "10.0.0.5"

    def test_a_trusted_peer_without_the_header_is_the_client(self) -> None:
        assert via("10.0.0.1") == "10.0.0.1"

    @pytest.mark.parametrize(
        ("values", "client"),
        [
            (["198.51.100.9:4711"], "198.51.100.9"),
            (["2001:db8::9"], "2001:db8::9"),
            (["[2001:db8::9]:4711"], "2001:db8::9"),
            (["::ffff:198.51.100.9"], "198.51.100.9"),
            (["  198.51.100.9  ,10.0.0.2"], "198.51.100.9"),
            (["2001:db8::9, 2001:db8:ffff::1"], "2001:db8::9"),
        ],
    )
    def test_ports_ipv6_and_mapped_addresses(self, values: list[str], client: str) -> None:
        assert via("10.0.0.1", *values) == client

    def test_ipv6_proxies(self) -> None:
        assert via("2001:db8:ffff::1", "198.51.100.9") == "198.51.100.9"
        assert via("::ffff:10.0.0.1", "198.51.100.9") == "198.51.100.9"

    @pytest.mark.parametrize(
        "values",
        [
            ["unknown"],
            ["_hidden"],
            ["garbage"],
            [""],
            ["198.51.100.9,"],  # an empty rightmost hop
            ["198.51.100.9, unknown"],
            ["198.51.100.9, garbage, 10.0.0.2"],
            ["198.51.100.9 10.0.0.2"],
            [", ".join(["10.0.0.2"] * 100)],  # longer than any real chain
        ],
    )
    def test_a_hop_that_is_not_an_address_is_no_address(self, values: list[str]) -> None:
        """Whether the unreadable hop was a proxy cannot be known: fail closed, never skip it
        and never fall back to the proxy's own address."""
        assert via("10.0.0.1", *values) is None

    def test_unreadable_hops_left_of_the_client_do_not_matter(self) -> None:
        """They were written by the client, whose address the proxy's hop already says."""
        assert via("10.0.0.1", "garbage, unknown, 198.51.100.9") == "198.51.100.9"

    def test_a_forwarded_header_is_ignored(self) -> None:
        """The proxies set X-Forwarded-For: a Forwarded header is what the client sent."""
        trusted = TrustedProxies(PROXIES)
        scope = asgi_scope("10.0.0.1", [("forwarded", "for=203.0.113.7")])
        assert str(trusted.asgi_client(scope)) == "10.0.0.1"
        scope = asgi_scope(
            "10.0.0.1", [("forwarded", "for=203.0.113.7"), ("x-forwarded-for", "198.51.100.9")]
        )
        assert str(trusted.asgi_client(scope)) == "198.51.100.9"


class TestForwarded:
    """RFC 7239 Forwarded: the `for=` of each element, read from the right as X-Forwarded-For."""

    def forwarded(self, peer: str, *values: str) -> str | None:
        return via(peer, *values, header="forwarded")

    @pytest.mark.parametrize(
        ("value", "client"),
        [
            ("for=198.51.100.9", "198.51.100.9"),
            ("For=198.51.100.9", "198.51.100.9"),
            ('for="198.51.100.9"', "198.51.100.9"),
            ('for="198.51.100.9:4711"', "198.51.100.9"),
            ('for="198.51.100.9:_port"', "198.51.100.9"),  # an obfuscated port
            ('for="[2001:db8::9]"', "2001:db8::9"),
            ('for="[2001:db8::9]:4711"', "2001:db8::9"),
            ('for="[::ffff:198.51.100.9]"', "198.51.100.9"),
            ("for=198.51.100.9;proto=https;by=10.0.0.1", "198.51.100.9"),
            ('proto=https;for="198.51.100.9";host="api.example.com"', "198.51.100.9"),
            ('for=198.51.100.9;host="a,b;c"', "198.51.100.9"),  # separators inside quotes
            ('for="198.51.100.9", for=10.0.0.2', "198.51.100.9"),
            ("for=198.51.100.9,,for=10.0.0.2", "198.51.100.9"),  # empty elements are ignored
        ],
    )
    def test_the_for_parameter(self, value: str, client: str) -> None:
        assert self.forwarded("10.0.0.1", value) == client

    def test_several_elements_and_fields_read_from_the_right(self) -> None:
        value = 'for=203.0.113.7, for="[2001:db8::9]:4711";proto=https, for=192.0.2.10'
        assert self.forwarded("10.0.0.1", value) == "2001:db8::9"
        assert self.forwarded("10.0.0.1", "for=203.0.113.7", "for=198.51.100.9") == ("198.51.100.9")

    def test_a_spoofed_leftmost_value_never_wins(self) -> None:
        assert self.forwarded("10.0.0.1", "for=203.0.113.7, for=198.51.100.9") == "198.51.100.9"

    def test_an_untrusted_peer_is_the_client(self) -> None:
        assert self.forwarded("198.51.100.9", "for=203.0.113.7") == "198.51.100.9"

    @pytest.mark.parametrize(
        "value",
        [
            "for=unknown",
            'for="unknown:4711"',
            "for=_hidden",
            'for="_hidden:4711"',
            "proto=https",  # an element that does not say whom it was for
            "for=198.51.100.9;for=203.0.113.8",  # a parameter twice in one element
            "for=[2001:db8::9]",  # IPv6 must be quoted: not a token
            'for="2001:db8::9"',  # nor bare
            'for="[2001:db8::9"',
            'for="198.51.100.9:port"',
            "for=198.51.100.9 extra",
            'for="198.51.100.9',  # a quote that never closes
            "for=",
            "garbage",
            'for=203.0.113.7, for="',  # a closing quote the client left open swallows the rest
        ],
    )
    def test_anything_but_an_address_is_no_address(self, value: str) -> None:
        assert self.forwarded("10.0.0.1", value) is None

    def test_a_client_cannot_unbalance_the_proxys_element(self) -> None:
        """The client's open quote swallows the element the proxy appended: nothing is read,
        rather than the client's own value."""
        assert self.forwarded("10.0.0.1", 'for="203.0.113.7', "for=198.51.100.9") is None
        assert self.forwarded("10.0.0.1", 'for=203.0.113.7;x="\\', 'for="[::9]:1"') is None

    def test_x_forwarded_for_is_ignored(self) -> None:
        trusted = TrustedProxies(PROXIES, "forwarded")
        scope = asgi_scope("10.0.0.1", [("x-forwarded-for", "203.0.113.7")])
        assert str(trusted.asgi_client(scope)) == "10.0.0.1"


def asgi_scope(client: str | None, headers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if client is None else (client, 50123),
        "headers": [(name.encode(), value.encode("latin-1")) for name, value in headers],
    }


class TestEachServersPeer:
    """Each kind of server hands over its peer its own way; all come to the same rules."""

    def test_asgi(self) -> None:
        trusted = TrustedProxies(PROXIES)
        assert str(trusted.asgi_client(asgi_scope("198.51.100.9", []))) == "198.51.100.9"
        assert str(trusted.asgi_client(asgi_scope("::ffff:198.51.100.9", []))) == "198.51.100.9"
        via_proxy = asgi_scope(
            "10.0.0.1", [("X-Forwarded-For", "203.0.113.7"), ("x-forwarded-for", "198.51.100.9")]
        )
        assert str(trusted.asgi_client(via_proxy)) == "198.51.100.9"
        assert trusted.asgi_client(asgi_scope(None, [])) is None
        assert trusted.asgi_client(asgi_scope("testclient", [])) is None  # Starlette's test client
        assert trusted.asgi_client({"type": "http", "headers": []}) is None

    def test_wsgi(self) -> None:
        trusted = TrustedProxies(PROXIES)
        assert str(trusted.wsgi_client({"REMOTE_ADDR": "2001:db8::9"})) == "2001:db8::9"
        environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7,198.51.100.9"}
        assert str(trusted.wsgi_client(environ)) == "198.51.100.9"
        untrusted = {"REMOTE_ADDR": "198.51.100.9", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
        assert str(trusted.wsgi_client(untrusted)) == "198.51.100.9"
        forwarded = TrustedProxies(PROXIES, "forwarded")
        environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_FORWARDED": 'for="[2001:db8::9]:1"'}
        assert str(forwarded.wsgi_client(environ)) == "2001:db8::9"
        assert trusted.wsgi_client({}) is None
        assert trusted.wsgi_client({"REMOTE_ADDR": ""}) is None

    def test_grpc(self) -> None:
        trusted = TrustedProxies(PROXIES)
        assert str(trusted.grpc_client("ipv6:%5B2001:db8::9%5D:1", ())) == "2001:db8::9"
        metadata: list[tuple[str, str | bytes]] = [
            ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
            ("x-other-bin", b"\x00"),
        ]
        assert str(trusted.grpc_client("ipv4:10.0.0.1:1", metadata)) == "198.51.100.9"
        assert str(trusted.grpc_client("ipv4:198.51.100.9:1", metadata)) == "198.51.100.9"
        assert trusted.grpc_client("unix:/run/api.sock", metadata) is None


class TestTheAddressSentToKeysvc:
    """AuthorizeRequest.client_ip: the address in its plain form, "" when there is none."""

    @pytest.mark.parametrize(
        ("given", "sent"),
        [
            (None, ""),
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:DB8::9", "2001:db8::9"),
            (ip("2001:db8::9"), "2001:db8::9"),
            (ip("::ffff:203.0.113.7"), "203.0.113.7"),
            ("not an address", ""),
            ("", ""),
        ],
    )
    def test_normalised(self, given: Any, sent: str) -> None:
        assert client_ip_field(given) == sent

    def test_anything_else_is_a_mistake(self) -> None:
        with pytest.raises(TypeError):
            client_ip_field(3232235777)  # type: ignore[arg-type]


SETTINGS = Settings(
    timeout=1.0,
    required_mode=pb.MODE_UNSPECIFIED,
    unavailable_status=503,
    realm="api",
    max_attempts=3,
)


def decided(reason: int, http_status: int) -> Any:
    response = pb.AuthorizeResponse(
        allowed=False,
        http_status=http_status,
        reason=reason,  # type: ignore[arg-type]
        key_id="KEY000000001",
        account_id="acct_1",
        mode=pb.MODE_LIVE,
        scopes=["links:read"],
    )
    return from_response(response, ("links:read",), SETTINGS)


class TestNewReasons:
    """keysvc's new refusals reach API callers with the status and challenge they call for."""

    def test_an_expired_key_is_401_invalid_token(self) -> None:
        verdict = decided(pb.REASON_EXPIRED, 401)
        assert (verdict.status, verdict.reason, verdict.allowed) == (401, "expired", False)
        assert verdict.headers()["WWW-Authenticate"] == (
            'Bearer realm="api", error="invalid_token", error_description="the API key has expired"'
        )

    def test_a_key_used_from_elsewhere_is_403(self) -> None:
        verdict = decided(pb.REASON_IP_NOT_ALLOWED, 403)
        assert (verdict.status, verdict.reason, verdict.allowed) == (403, "ip_not_allowed", False)
        assert "WWW-Authenticate" not in verdict.headers()
        assert verdict.error_body()["error"]["reason"] == "ip_not_allowed"

    @pytest.mark.parametrize(("http_status", "status"), [(401, 401), (403, 403), (200, 401)])
    def test_a_reason_newer_than_the_client_is_still_a_refusal(
        self, http_status: int, status: int
    ) -> None:
        """Fail closed: keysvc said no, and a status that is not a refusal's becomes 401."""
        verdict = decided(99, http_status)
        assert (verdict.status, verdict.reason, verdict.allowed) == (status, "refused", False)
