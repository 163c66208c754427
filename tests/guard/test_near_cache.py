"""The Guard's near cache on its own: what it keeps of keysvc's answers, for how long, and that
it decides a held key's requests exactly as keysvc would. No server: keysvc's answers are made
with keysvc's own conversion (keysvc.api.convert), its address rules are keysvc.core.networks.
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from keysvc_client import KeyContext, Verdict
from keysvc_client._guard_common import Settings, from_response, settings
from keysvc_client._near_cache import Entry, NearCache, Refusal, key_digest
from keysvc_client.metrics import Counters
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.api import convert
from keysvc.core import networks
from keysvc.core.model import Decision, KeyGrant, Mode, Reason

RAW_KEY = "ck_live_Kx7Qp2Lm9Rt4" + "s3cr3tS3cr3ts3cr3tS3cr3ts3cr3tS3" + "AbC123"
HEADER = f"Bearer {RAW_KEY}"
DIGEST = hashlib.sha256(RAW_KEY.encode()).digest()
KEY_ID = "Kx7Qp2Lm9Rt4"
CATALOGUE = ("customers:read", "customers:write", "links:read", "links:write")
LEASE = 5.0
T0 = 1000.0  # lease_clock seconds: the tests pass the clock's reading in


def guard_settings(required_mode: str | None = None) -> Settings:
    return settings(
        timeout=0.05,
        required_mode=required_mode,
        unavailable_status=503,
        realm="api",
        max_attempts=3,
    )


def grant(
    *,
    key_id: str = KEY_ID,
    mode: Mode = Mode.LIVE,
    scopes: Iterable[str] = ("links:read", "customers:read"),
    revoked: bool = False,
    expire_time: datetime | None = None,
    allowed_ips: Iterable[str] = (),
) -> KeyGrant:
    return KeyGrant(
        key_id=key_id,
        account_id="acct_near",
        mode=mode,
        scopes=frozenset(scopes),
        revoked=revoked,
        digest=DIGEST,
        expire_time=expire_time,
        allowed_ips=networks.parsed(networks.normalized(allowed_ips)),
    )


def keysvc_decision(
    state: KeyGrant, required: Iterable[str], mode: str | None, client_ip: str
) -> Decision:
    """keysvc's decision on a request for a key in `state`, as keysvc/usecases/authorize.py
    makes it (revoked, expired, address, mode, scopes, in that order)."""
    needed = frozenset(required)
    if state.revoked:
        return Decision(Reason.REVOKED, state)
    if state.expire_time is not None and state.expire_time <= datetime.now(UTC):
        return Decision(Reason.EXPIRED, state)
    if state.allowed_ips and not networks.allows(state.allowed_ips, client_ip):
        return Decision(Reason.IP_NOT_ALLOWED, state, lease_seconds=LEASE)
    if mode is not None and state.mode is not Mode(mode):
        return Decision(Reason.WRONG_MODE, state, lease_seconds=LEASE)
    missing = needed - state.scopes
    if missing:
        return Decision(
            Reason.INSUFFICIENT_SCOPE, state, tuple(sorted(missing)), lease_seconds=LEASE
        )
    return Decision(Reason.ALLOWED, state, lease_seconds=LEASE)


def answer(
    state: KeyGrant,
    required: tuple[str, ...] = (),
    mode: str | None = None,
    client_ip: str = "",
) -> pb.AuthorizeResponse:
    """keysvc's AuthorizeResponse to that request, as the server sends it."""
    return convert.decision_to_pb(keysvc_decision(state, required, mode, client_ip))


def keysvc_verdict(
    state: KeyGrant, required: tuple[str, ...], mode: str | None = None, client_ip: str = ""
) -> Verdict:
    """What the Guard answers when keysvc itself decides the request."""
    return from_response(answer(state, required, mode, client_ip), required, guard_settings(mode))


def warm(
    cache: NearCache,
    state: KeyGrant,
    *,
    sent: float = T0,
    mode: str | None = None,
    required: tuple[str, ...] = ("links:read",),
    client_ip: str = "",
    digest: bytes = DIGEST,
    response: pb.AuthorizeResponse | None = None,
) -> None:
    """The cache told what keysvc answered to a request sent at `sent`, as the Guard tells it."""
    response = response or answer(state, required, mode, client_ip)
    cache.learn(
        digest,
        response,
        required,
        sent=sent,
        epoch=cache.epoch,
        session=1,
        verdict=from_response(response, required, guard_settings(mode)),
        settings=guard_settings(mode),
        client_ip=client_ip,
    )


def hit(
    cache: NearCache,
    required: tuple[str, ...] = ("links:read",),
    *,
    now: float = T0 + 1,
    mode: str | None = None,
    client_ip: str = "",
    digest: bytes = DIGEST,
) -> Verdict | None:
    """The cache's verdict at `now`, or None when the Guard would have to ask keysvc."""
    held = cache.get(digest, now)
    if held is None:
        return None
    return held.decide(required, client_ip, guard_settings(mode), cache.known_scopes)


def known(cache: NearCache) -> NearCache:
    """`cache` having seen keysvc accept every scope of the catalogue."""
    cache.known_scopes.update(CATALOGUE)
    return cache


class TestTheSameVerdictsAsKeysvc:
    """A held key's requests get the Verdict the Guard gives when keysvc decides them: status,
    reason, message, key, scopes, and so the same body and challenge."""

    @pytest.mark.parametrize(
        "required",
        [(), ("links:read",), ("links:read", "customers:read"), ("links:write",),
         ("links:write", "customers:write", "links:read"), ("customers:write", "links:write")],
    )  # fmt: skip
    @pytest.mark.parametrize("mode", [None, "live", "test"])
    def test_scopes_and_mode(self, required: tuple[str, ...], mode: str | None) -> None:
        state = grant()
        cache = known(NearCache())
        warm(cache, state, mode=mode)
        verdict = hit(cache, required, mode=mode)
        assert verdict == keysvc_verdict(state, required, mode)
        assert verdict is not None
        assert verdict.headers() == keysvc_verdict(state, required, mode).headers()
        assert verdict.error_body() == keysvc_verdict(state, required, mode).error_body()

    def test_missing_scopes_are_named_in_keysvcs_order(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(scopes=["links:read"]))
        verdict = hit(cache, ("links:write", "customers:write", "customers:read"))
        assert verdict is not None
        assert verdict.missing_scopes == ("customers:read", "customers:write", "links:write")
        assert verdict.headers()["WWW-Authenticate"] == (
            'Bearer realm="api", error="insufficient_scope",'
            ' scope="links:write customers:write customers:read"'
        )

    def test_an_expired_key_is_401_expired_by_the_wall_clock(self) -> None:
        """Held while it had an hour left; its expiry passed since (by this machine's clock)."""
        future = grant(expire_time=datetime.now(UTC) + timedelta(hours=1))
        cache = known(NearCache())
        warm(cache, future)
        assert hit(cache) == keysvc_verdict(future, ("links:read",))
        held = cache.get(DIGEST, T0 + 1)
        assert isinstance(held, Entry)
        held.expire_time = time.time() - 1  # as if an hour went by
        past = grant(expire_time=datetime.now(UTC) - timedelta(seconds=1))
        verdict = hit(cache)
        assert verdict == keysvc_verdict(past, ("links:read",))
        assert verdict is not None and (verdict.status, verdict.reason) == (401, "expired")
        assert 'error="invalid_token"' in verdict.headers()["WWW-Authenticate"]

    @pytest.mark.parametrize(
        "client_ip",
        ["203.0.113.9", "198.51.100.7", "", "not an address", "::ffff:203.0.113.9",
         "2001:db8::5", "2001:db9::5", " 203.0.113.10 ", "203.0.113.7"],
    )  # fmt: skip
    def test_allowed_ips(self, client_ip: str) -> None:
        state = grant(allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
        cache = known(NearCache())
        warm(cache, state, client_ip="203.0.113.7")
        assert hit(cache, client_ip=client_ip) == keysvc_verdict(
            state, ("links:read",), client_ip=client_ip
        )

    def test_keysvcs_order_expiry_then_address_then_mode_then_scopes(self) -> None:
        state = grant(allowed_ips=["203.0.113.7"], mode=Mode.TEST)
        cache = known(NearCache())
        warm(cache, state, client_ip="203.0.113.7")
        verdict = hit(cache, ("links:write",), mode="live", client_ip="198.51.100.1")
        assert verdict is not None and verdict.reason == "ip_not_allowed"
        verdict = hit(cache, ("links:write",), mode="live", client_ip="203.0.113.7")
        assert verdict is not None and verdict.reason == "wrong_mode"
        held = cache.get(DIGEST, T0 + 1)
        assert isinstance(held, Entry)
        held.expire_time = time.time() - 1
        verdict = hit(cache, ("links:write",), mode="live", client_ip="198.51.100.1")
        assert verdict is not None and verdict.reason == "expired"

    def test_a_revoked_key_is_refused_for_good(self) -> None:
        revoked = grant(revoked=True)
        cache = known(NearCache())
        warm(cache, revoked)
        held = cache.get(DIGEST, T0 + 1e9)
        assert isinstance(held, Refusal)
        assert hit(cache, ("links:write",), now=T0 + 1e9) == keysvc_verdict(
            revoked, ("links:write",)
        )


class TestAddresses:
    """The address check is keysvc's (keysvc.core.networks), for any address and ranges."""

    addresses = st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
        st.sampled_from(["", "garbage", "203.0.113", "::ffff:", " 10.0.0.1"]),
    )
    ranges = st.lists(
        st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).flatmap(
            lambda a: st.integers(a.max_prefixlen // 2, a.max_prefixlen).map(
                lambda bits: str(ipaddress.ip_network(f"{a}/{bits}", strict=False))
            )
        ),
        min_size=1,
        max_size=4,
    )

    @given(allowed=ranges, client_ip=addresses)
    def test_as_keysvc(self, allowed: list[str], client_ip: str) -> None:
        try:
            state = grant(allowed_ips=allowed)
        except Exception:  # a range keysvc itself would refuse to store
            return
        cache = known(NearCache())
        # Warmed by a request from inside the first range, which keysvc allowed.
        inside = str(state.allowed_ips[0].network_address)
        warm(cache, state, client_ip=inside)
        verdict = hit(cache, client_ip=client_ip)
        assert verdict is not None
        assert verdict.allowed == networks.allows(state.allowed_ips, client_ip)


class TestWhatIsKept:
    def test_keyed_by_the_keys_digest_however_the_header_spells_it(self) -> None:
        assert {
            key_digest(HEADER),
            key_digest(RAW_KEY),
            key_digest(f"  bearer   {RAW_KEY}  "),
            key_digest(f"BEARER {RAW_KEY}"),
        } == {DIGEST}
        assert key_digest(RAW_KEY[:-1] + "x") != DIGEST

    def test_the_raw_key_is_nowhere_in_the_cache(self) -> None:
        """Everything reachable from the cache object (attributes, slots, containers) is
        searched for the key, whole or as its secret."""
        cache = known(NearCache())
        warm(cache, grant(allowed_ips=["203.0.113.0/24"]), client_ip="203.0.113.1")
        warm(cache, grant(key_id="Rv0kedKey000", revoked=True), digest=b"r" * 32)
        assert hit(cache, client_ip="203.0.113.1") is not None
        secret = RAW_KEY[20:52]
        seen: set[int] = set()
        stack: list[object] = [cache]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, type):
                continue
            seen.add(id(obj))
            if isinstance(obj, str | bytes):
                text = obj if isinstance(obj, str) else obj.decode("latin-1")
                assert secret not in text and RAW_KEY not in text
                continue
            if hasattr(obj, "__dict__"):
                stack.extend(vars(obj).values())
            stack.extend(gc.get_referents(obj))
        assert len(seen) > 20  # the walk did reach the entries

    def test_lease_zero_or_unset_is_not_kept(self) -> None:
        cache = known(NearCache())
        response = answer(grant(), ("links:read",))
        response.ClearField("lease")
        warm(cache, grant(), response=response)
        response.lease.FromSeconds(0)
        warm(cache, grant(), response=response)
        assert len(cache) == 0

    @pytest.mark.parametrize(
        "reason", [pb.REASON_NOT_FOUND, pb.REASON_MALFORMED, pb.REASON_MISSING]
    )
    def test_refusals_of_no_key_are_not_kept(self, reason: pb.Reason.ValueType) -> None:
        cache = NearCache()
        warm(cache, grant(), response=pb.AuthorizeResponse(http_status=401, reason=reason))
        assert len(cache) == 0

    def test_an_answer_the_cache_would_decide_otherwise_is_not_kept(self) -> None:
        """keysvc allowed a request the held state would refuse (say, a newer keysvc reading
        addresses otherwise): the cache leaves such a key to keysvc."""
        state = grant(allowed_ips=["203.0.113.0/24"])
        response = answer(state, ("links:read",), client_ip="203.0.113.1")
        cache = known(NearCache())
        warm(cache, state, response=response, client_ip="198.51.100.1")
        assert len(cache) == 0

    def test_a_scope_keysvc_never_showed_is_asked_about(self) -> None:
        """keysvc refuses an unknown required scope (500 misconfigured): the cache cannot tell
        a scope it never saw from an unknown one, so keysvc decides."""
        cache = NearCache()
        warm(cache, grant(scopes=["links:read"]), required=("links:read",))
        assert hit(cache, ("links:delete",)) is None
        assert hit(cache, ("links:read", "links:delete")) is None
        assert hit(cache, ("links:read",)) is not None
        cache.known_scopes.add("links:write")  # keysvc accepted it for some request
        verdict = hit(cache, ("links:write",))
        assert verdict is not None and verdict.reason == "insufficient_scope"


class TestTheLease:
    """An entry decides until the request's send time plus the lease, and no longer."""

    def test_until_send_time_plus_lease(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        assert hit(cache, now=T0 + LEASE - 0.001) is not None
        assert hit(cache, now=T0 + LEASE) is None
        assert len(cache) == 0  # gone, not just skipped

    def test_counted_from_sending_not_from_receiving(self) -> None:
        """An answer that took 3 s to arrive leaves 2 s of a 5 s lease, not 5."""
        cache = known(NearCache())
        sent = T0
        received = T0 + 3
        warm(cache, grant(), sent=sent)
        assert hit(cache, now=received + 1.9) is not None
        assert hit(cache, now=received + 2.0) is None

    def test_renewal_is_due_at_half_the_lease(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        held = cache.get(DIGEST, T0)
        assert isinstance(held, Entry)
        assert held.renew_at == T0 + LEASE / 2

    def test_a_renewal_replaces_the_entry_from_its_own_send_time(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        held = cache.get(DIGEST, T0 + 3)
        assert isinstance(held, Entry)
        cache.renewed(held, answer(grant(), ()), sent=T0 + 3)
        assert hit(cache, now=T0 + 3 + LEASE - 0.001) is not None
        assert hit(cache, now=T0 + 3 + LEASE) is None

    def test_a_renewal_answering_revoked_refuses_the_key(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        held = cache.get(DIGEST, T0 + 3)
        assert isinstance(held, Entry)
        cache.renewed(held, answer(grant(revoked=True), ()), sent=T0 + 3)
        verdict = hit(cache, now=T0 + 4)
        assert verdict is not None and verdict.reason == "revoked"

    def test_a_renewal_after_a_push_is_not_kept(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        held = cache.get(DIGEST, T0 + 3)
        assert isinstance(held, Entry)
        cache.drop([KEY_ID])
        cache.renewed(held, answer(grant(), ()), sent=T0 + 3)
        assert hit(cache, now=T0 + 3) is None


class TestPushes:
    def test_a_push_drops_every_entry_of_its_keys(self) -> None:
        cache = known(NearCache())
        warm(cache, grant(), sent=T0)
        other = hashlib.sha256(b"other").digest()
        warm(cache, grant(key_id="OtherKey0001"), digest=other)
        assert cache.drop([KEY_ID, "NotHeld00001"]) == 1
        assert hit(cache) is None
        assert hit(cache, digest=other) is not None

    def test_an_answer_sent_before_a_push_of_its_key_is_not_kept(self) -> None:
        """keysvc may have decided on the state the push says changed."""
        cache = known(NearCache())
        before = cache.epoch
        cache.drop([KEY_ID])
        response = answer(grant(), ("links:read",))
        cache.learn(
            DIGEST,
            response,
            ("links:read",),
            sent=T0,
            epoch=before,
            session=1,
            verdict=from_response(response, ("links:read",), guard_settings()),
            settings=guard_settings(),
            client_ip="",
        )
        assert len(cache) == 0
        warm(cache, grant())  # sent after the push: kept
        assert hit(cache) is not None


class TestBounds:
    def test_least_recently_used_go_first(self) -> None:
        cache = known(NearCache(max_entries=3))
        digests = [hashlib.sha256(str(n).encode()).digest() for n in range(4)]
        for n, digest in enumerate(digests[:3]):
            warm(cache, grant(key_id=f"Key{n:09d}"), digest=digest)
        assert hit(cache, digest=digests[0]) is not None  # used: now the most recent
        warm(cache, grant(key_id="Key000000003"), digest=digests[3])
        assert len(cache) == 3
        assert hit(cache, digest=digests[1]) is None
        assert all(hit(cache, digest=d) is not None for d in (digests[0], digests[2], digests[3]))

    def test_final_refusals_count_against_the_same_bound(self) -> None:
        cache = known(NearCache(max_entries=2))
        for n in range(5):
            digest = hashlib.sha256(str(n).encode()).digest()
            warm(cache, grant(key_id=f"Key{n:09d}", revoked=True), digest=digest)
        assert len(cache) == 2

    def test_a_size_of_zero_is_refused_by_the_cache_itself(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            NearCache(max_entries=0)

    def test_concurrent_hits_and_changes_keep_the_index_whole(self) -> None:
        """Threads hitting, filling past the bound and dropping at once: afterwards every key
        the index names is held, and the bound holds."""
        cache = known(NearCache(max_entries=50))
        stop = time.monotonic() + 1.0
        errors: list[BaseException] = []

        def churn(offset: int) -> None:
            try:
                n = 0
                while time.monotonic() < stop:
                    n += 1
                    digest = hashlib.sha256(f"{offset}-{n % 80}".encode()).digest()
                    key_id = f"K{offset:02d}{n % 80:09d}"
                    warm(cache, grant(key_id=key_id), digest=digest)
                    hit(cache, digest=digest)
                    if n % 7 == 0:
                        cache.drop([key_id])
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(cache) <= 50
        for key_id, digest in cache._digests.items():
            held = cache._held[digest]
            assert held.key.key_id == key_id


class TestCounters:
    def test_threads_counting_at_once_lose_nothing(self) -> None:
        counters = Counters()

        def count() -> None:
            for _ in range(20_000):
                counters.hits.add()

        threads = [threading.Thread(target=count) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert counters.stats().hits == 160_000


def test_key_context_is_the_answers() -> None:
    """The held key is described as keysvc described it."""
    cache = known(NearCache())
    warm(cache, grant(scopes=["links:read", "customers:read"]))
    verdict = hit(cache)
    assert verdict is not None
    assert verdict.key == KeyContext(
        key_id=KEY_ID,
        account_id="acct_near",
        mode="live",
        scopes=("customers:read", "links:read"),
    )
