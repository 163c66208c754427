"""Authorize, wired to KeyAdmin over one SQLite store and cache as keysvc.server wires them."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysvc.adapters.cache.memory import MemoryKeyCache
from keysvc.core import keys
from keysvc.core.errors import InvalidArgument
from keysvc.core.hashing import Argon2Parameters
from keysvc.core.model import Actor, CreatedKey, Decision, KeyGrant, Mode, Reason
from keysvc.usecases.authorize import Authorizer

from .conftest import Keysvc, KeysvcFixture
from .support import (
    CountingVerifier,
    async_test,
    checksum,
    secret_of,
    signed,
    within_deadline,
)

LINKS = ("links:read", "links:write")
ADMIN = Actor("admin", "ipv4:127.0.0.1:50000")


async def _create(
    keysvc: Keysvc,
    *,
    account_id: str = "acct_1",
    mode: Mode = Mode.LIVE,
    scopes: tuple[str, ...] = LINKS,
) -> CreatedKey:
    created = await keysvc.admin.create_key(account_id, "Production server", mode, scopes, ADMIN)
    keysvc.clock.advance(1)
    return created


def _wrong_secret(created: CreatedKey) -> str:
    """A well-formed key with the right key id and mode but a secret nobody was given."""
    return keys.generate(created.key.mode, created.key.id)


class PausingAuthorizer(Authorizer):
    """An Authorizer that holds each cold look-up between its store read and its cache fill."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read_from_store: asyncio.Queue[KeyGrant] = asyncio.Queue()
        self.resume = asyncio.Event()

    async def before_fill(self, grant: KeyGrant) -> None:
        self.read_from_store.put_nowait(grant)
        await self.resume.wait()


class TestAllowed:
    @async_test
    async def test_a_valid_key_is_allowed_with_its_fields(self, keysvc: Keysvc) -> None:
        """A valid key with the required scopes is allowed (200), and the decision names the key."""
        created = await _create(keysvc)
        decision = await keysvc.authorizer.authorize(created.raw_key, ["links:read"])
        assert decision.reason is Reason.ALLOWED
        assert decision.allowed is True
        assert decision.http_status == 200
        assert decision.missing_scopes == ()
        grant = decision.grant
        assert grant is not None
        assert (grant.key_id, grant.account_id, grant.mode) == (created.key.id, "acct_1", Mode.LIVE)
        assert grant.scopes == frozenset(LINKS)
        assert grant.revoked is False

    @pytest.mark.parametrize(
        "template", ["{key}", "Bearer {key}", "bearer {key}", "  Bearer {key} "]
    )
    @async_test
    async def test_takes_the_raw_key_or_the_header_value(
        self, keysvc: Keysvc, template: str
    ) -> None:
        """The raw key and the whole 'Bearer <key>' header value both authorize."""
        created = await _create(keysvc)
        decision = await keysvc.authorizer.authorize(template.format(key=created.raw_key))
        assert decision.reason is Reason.ALLOWED

    @async_test
    async def test_no_required_scopes_means_any_valid_key(self, keysvc: Keysvc) -> None:
        """With nothing required, any valid key of either mode is allowed."""
        for mode in Mode:
            created = await _create(keysvc, mode=mode, scopes=("events:read",))
            assert (await keysvc.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED

    @async_test
    async def test_works_on_a_cold_cache(self, keysvc: Keysvc) -> None:
        """A replica that never saw the key verifies it from the store and allows it."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        decision = await replica.authorizer.authorize(created.raw_key, ["links:write"])
        assert decision.reason is Reason.ALLOWED
        assert decision.grant is not None and decision.grant.key_id == created.key.id


class TestUnauthenticated:
    @pytest.mark.parametrize("value", ["", "   ", "Bearer ", "bearer  "])
    @async_test
    async def test_no_key_is_missing(self, keysvc: Keysvc, value: str) -> None:
        """No key, or a Bearer scheme with nothing after it, is MISSING (401)."""
        decision = await keysvc.authorizer.authorize(value)
        assert decision.reason is Reason.MISSING
        assert (decision.allowed, decision.http_status, decision.grant) == (False, 401, None)

    @pytest.mark.parametrize(
        "value",
        ["garbage", "Bearer garbage", "ck_live_short", "Basic dXNlcjpwYXNz", "ck_prod_" + "0" * 50],
    )
    @async_test
    async def test_garbage_is_malformed(self, keysvc: Keysvc, value: str) -> None:
        """Anything that is not a well-formed key is MALFORMED (401), with no argon2 spent."""
        decision = await keysvc.authorizer.authorize(value)
        assert decision.reason is Reason.MALFORMED
        assert (decision.http_status, decision.grant) == (401, None)
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_a_mistyped_key_is_malformed(self, keysvc: Keysvc) -> None:
        """A real key with one character changed fails its checksum: MALFORMED, not NOT_FOUND."""
        created = await _create(keysvc)
        raw = created.raw_key
        typo = raw[:30] + ("A" if raw[30] != "A" else "B") + raw[31:]
        assert (await keysvc.authorizer.authorize(typo)).reason is Reason.MALFORMED

    @async_test
    async def test_an_unknown_key_is_not_found(self, keysvc: Keysvc) -> None:
        """A well-formed key that was never issued is NOT_FOUND (401), with no argon2 spent."""
        decision = await keysvc.authorizer.authorize(keys.generate(Mode.LIVE, keys.new_key_id()))
        assert decision.reason is Reason.NOT_FOUND
        assert (decision.http_status, decision.grant) == (401, None)
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_the_right_id_with_a_wrong_secret_is_not_found(self, keysvc: Keysvc) -> None:
        """A key with a real key id but the wrong secret is NOT_FOUND, cached or not."""
        created = await _create(keysvc)
        forged = _wrong_secret(created)
        hot = await keysvc.authorizer.authorize(forged)
        cold = await (await keysvc.replica()).authorizer.authorize(forged)
        assert (hot.reason, hot.http_status, hot.grant) == (Reason.NOT_FOUND, 401, None)
        assert (cold.reason, cold.http_status, cold.grant) == (Reason.NOT_FOUND, 401, None)

    @async_test
    async def test_the_real_key_still_works_after_a_wrong_secret(self, keysvc: Keysvc) -> None:
        """Someone guessing secrets for a key id does not lock its owner out."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        assert (
            await replica.authorizer.authorize(_wrong_secret(created))
        ).reason is Reason.NOT_FOUND
        assert (await replica.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED

    @async_test
    async def test_a_key_re_signed_for_the_other_mode_is_not_found(self, keysvc: Keysvc) -> None:
        """A test key re-prefixed ck_live_ with a valid checksum is not the live key it claims."""
        created = await _create(keysvc, mode=Mode.TEST)
        forged = signed("ck_live_" + created.raw_key[8 : -keys.CHECKSUM_LENGTH])
        assert keys.parse(forged) is not None
        assert (await keysvc.authorizer.authorize(forged)).reason is Reason.NOT_FOUND
        assert (
            await (await keysvc.replica()).authorizer.authorize(forged)
        ).reason is Reason.NOT_FOUND


class TestScopesAndMode:
    @async_test
    async def test_a_missing_scope_is_insufficient(self, keysvc: Keysvc) -> None:
        """A valid key without a required scope is INSUFFICIENT_SCOPE (403), naming the scope."""
        created = await _create(keysvc, scopes=("links:read",))
        decision = await keysvc.authorizer.authorize(created.raw_key, ["webhooks:read"])
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        assert (decision.allowed, decision.http_status) == (False, 403)
        assert decision.missing_scopes == ("webhooks:read",)
        assert decision.grant is not None and decision.grant.key_id == created.key.id

    @async_test
    async def test_every_required_scope_must_be_held(self, keysvc: Keysvc) -> None:
        """Holding some required scopes is not enough; the missing ones are listed, sorted."""
        created = await _create(keysvc, scopes=("links:read", "events:read"))
        decision = await keysvc.authorizer.authorize(
            created.raw_key, ["sessions:write", "links:read", "customers:read"]
        )
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        assert decision.missing_scopes == ("customers:read", "sessions:write")
        both = await keysvc.authorizer.authorize(created.raw_key, ["events:read", "links:read"])
        assert both.reason is Reason.ALLOWED

    @async_test
    async def test_write_does_not_imply_read(self, keysvc: Keysvc) -> None:
        """A key with links:write alone may not list links."""
        created = await _create(keysvc, scopes=("links:write",))
        decision = await keysvc.authorizer.authorize(created.raw_key, ["links:read"])
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        assert decision.missing_scopes == ("links:read",)

    @pytest.mark.parametrize(
        ("key_mode", "required"), [(Mode.LIVE, Mode.TEST), (Mode.TEST, Mode.LIVE)]
    )
    @async_test
    async def test_the_other_mode_is_refused(
        self, keysvc: Keysvc, key_mode: Mode, required: Mode
    ) -> None:
        """A key of a mode the caller does not accept is WRONG_MODE (403)."""
        created = await _create(keysvc, mode=key_mode)
        decision = await keysvc.authorizer.authorize(created.raw_key, ["links:read"], required)
        assert decision.reason is Reason.WRONG_MODE
        assert (decision.allowed, decision.http_status) == (False, 403)
        assert decision.grant is not None and decision.grant.mode is key_mode

    @async_test
    async def test_the_required_mode_is_allowed(self, keysvc: Keysvc) -> None:
        """A key of the required mode is allowed."""
        created = await _create(keysvc, mode=Mode.TEST)
        decision = await keysvc.authorizer.authorize(created.raw_key, ["links:read"], Mode.TEST)
        assert decision.reason is Reason.ALLOWED

    @async_test
    async def test_an_unknown_required_scope_is_the_callers_error(self, keysvc: Keysvc) -> None:
        """Requiring a scope outside the catalogue is InvalidArgument, not a decision."""
        created = await _create(keysvc)
        with pytest.raises(InvalidArgument, match="payouts:write"):
            await keysvc.authorizer.authorize(created.raw_key, ["payouts:write"])
        with pytest.raises(InvalidArgument):
            await keysvc.authorizer.authorize("", ["payouts:write"])


class TestRevoked:
    @async_test
    async def test_the_very_next_authorize_is_revoked(self, keysvc: Keysvc) -> None:
        """Revocation is immediate: the next Authorize of the key is REVOKED (401)."""
        created = await _create(keysvc)
        assert (await keysvc.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        decision = await keysvc.authorizer.authorize(created.raw_key)
        assert decision.reason is Reason.REVOKED
        assert (decision.allowed, decision.http_status) == (False, 401)
        again = await keysvc.authorizer.authorize(created.raw_key, ["links:read"])
        assert again.reason is Reason.REVOKED

    @async_test
    async def test_is_revoked_on_a_cold_cache(self, keysvc: Keysvc) -> None:
        """A replica that never cached the key reads the revocation from the store."""
        created = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        replica = await keysvc.replica()
        assert (await replica.authorizer.authorize(created.raw_key)).reason is Reason.REVOKED
        assert (await replica.authorizer.authorize(created.raw_key)).reason is Reason.REVOKED

    @async_test
    async def test_a_wrong_secret_for_a_revoked_key_is_not_found(self, keysvc: Keysvc) -> None:
        """Only the real key learns that it was revoked; a guess is still NOT_FOUND."""
        created = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        decision = await keysvc.authorizer.authorize(_wrong_secret(created))
        assert decision.reason is Reason.NOT_FOUND

    @async_test
    async def test_revoking_one_key_leaves_the_others(self, keysvc: Keysvc) -> None:
        """Revoking one integration's key does not affect another key of the account."""
        old, new = await _create(keysvc), await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", old.key.id, ADMIN)
        assert (await keysvc.authorizer.authorize(new.raw_key)).reason is Reason.ALLOWED

    @async_test
    async def test_a_look_up_that_read_the_key_before_its_revocation_allows_nothing_after(
        self, keysvc: Keysvc
    ) -> None:
        """A cold look-up that read the key before its revocation answers only the request
        that started it, which arrived first; what it caches allows no later request."""
        created = await _create(keysvc)
        replica = await keysvc.replica(authorizer_class=PausingAuthorizer)
        authorizer = replica.authorizer
        assert isinstance(authorizer, PausingAuthorizer)

        pending = asyncio.create_task(authorizer.authorize(created.raw_key, ["links:read"]))
        stale = await within_deadline(authorizer.read_from_store.get())
        assert stale.revoked is False  # the look-up read the key while it was active
        await keysvc.admin.revoke_key("acct_1", created.key.id, ADMIN)
        authorizer.resume.set()
        await within_deadline(pending)
        cached = await replica.cache.get(created.key.id)

        assert cached is not None and not cached.revoked  # the stale grant was cached...
        assert (await authorizer.authorize(created.raw_key)).reason is Reason.REVOKED  # ...inert


class TestCost:
    @async_test
    async def test_a_new_key_is_authorized_without_argon2(self, keysvc: Keysvc) -> None:
        """Creating a key warms the cache: its first Authorize needs no argon2."""
        created = await _create(keysvc)
        for _ in range(10):
            assert (await keysvc.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_a_cold_key_is_verified_once_however_many_ask(self, keysvc: Keysvc) -> None:
        """Fifty concurrent Authorize calls for one uncached key run argon2 once between them."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        decisions = await within_deadline(
            asyncio.gather(*(replica.authorizer.authorize(created.raw_key) for _ in range(50)))
        )
        assert {d.reason for d in decisions} == {Reason.ALLOWED}
        assert replica.verifier.verifications == 1
        await replica.authorizer.authorize(created.raw_key)
        assert replica.verifier.verifications == 1

    @async_test
    async def test_concurrent_wrong_secrets_are_verified_once(self, keysvc: Keysvc) -> None:
        """Fifty concurrent calls with one wrong secret run argon2 once between them."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        forged = _wrong_secret(created)
        decisions = await within_deadline(
            asyncio.gather(*(replica.authorizer.authorize(forged) for _ in range(50)))
        )
        assert {d.reason for d in decisions} == {Reason.NOT_FOUND}
        assert replica.verifier.verifications == 1

    @async_test
    async def test_a_repeated_wrong_secret_costs_argon2_once_per_rejection_ttl(
        self, keysvc: Keysvc
    ) -> None:
        """Repeating a wrong secret is refused without argon2 until the rejection TTL runs out."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        forged = _wrong_secret(created)
        for _ in range(5):
            assert (await replica.authorizer.authorize(forged)).reason is Reason.NOT_FOUND
        assert replica.verifier.verifications == 1
        replica.monotonic.advance(59)
        assert (await replica.authorizer.authorize(forged)).reason is Reason.NOT_FOUND
        assert replica.verifier.verifications == 1
        replica.monotonic.advance(1)
        assert (await replica.authorizer.authorize(forged)).reason is Reason.NOT_FOUND
        assert replica.verifier.verifications == 2

    @async_test
    async def test_a_wrong_secret_against_a_cached_key_costs_no_argon2(
        self, keysvc: Keysvc
    ) -> None:
        """Once the real key is cached, any other secret is refused by digest alone."""
        created = await _create(keysvc)
        for _ in range(5):
            decision = await keysvc.authorizer.authorize(_wrong_secret(created))
            assert decision.reason is Reason.NOT_FOUND
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_an_old_verifier_is_upgraded_on_use(self, keysvc: Keysvc) -> None:
        """A key hashed with older argon2 parameters is rehashed with the current ones when used."""
        created = await _create(keysvc)
        current = CountingVerifier(
            Argon2Parameters(time_cost=2, memory_cost_kib=1024, parallelism=1)
        )
        found = keysvc.store.find(created.key.id)
        assert found is not None and current.needs_rehash(found.verifier)

        replica = await keysvc.replica(verifier=current)
        assert (await replica.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED

        found = keysvc.store.find(created.key.id)
        assert found is not None
        assert current.needs_rehash(found.verifier) is False
        assert current.verify(found.verifier, created.raw_key) is True
        assert (
            await (await keysvc.replica()).authorizer.authorize(created.raw_key)
        ).reason is Reason.ALLOWED


class TestLastUsed:
    @async_test
    async def test_is_set_by_an_allowed_authorize(self, keysvc: Keysvc) -> None:
        """After an allowed Authorize and a flush, the key's last_used_at is the time of use."""
        created = await _create(keysvc)
        used_at = keysvc.clock.advance(60)
        await keysvc.authorizer.authorize(created.raw_key)
        keysvc.clock.advance(60)
        await keysvc.recorder.flush()
        key = await keysvc.admin.get_key("acct_1", created.key.id)
        assert key.last_used_at == used_at

    @async_test
    async def test_keeps_the_latest_use(self, keysvc: Keysvc) -> None:
        """Several uses between flushes leave the latest one as last_used_at."""
        created = await _create(keysvc)
        await keysvc.authorizer.authorize(created.raw_key)
        latest = keysvc.clock.advance(30)
        await keysvc.authorizer.authorize(created.raw_key)
        await keysvc.recorder.flush()
        assert (await keysvc.admin.get_key("acct_1", created.key.id)).last_used_at == latest

    @async_test
    async def test_is_set_when_the_key_authenticated_but_lacked_a_scope(
        self, keysvc: Keysvc
    ) -> None:
        """A refusal for scope still follows a successful authentication, so it counts as a use."""
        created = await _create(keysvc, scopes=("links:read",))
        decision = await keysvc.authorizer.authorize(created.raw_key, ["customers:write"])
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        await keysvc.recorder.flush()
        key = await keysvc.admin.get_key("acct_1", created.key.id)
        assert key.last_used_at == keysvc.clock.now

    @async_test
    async def test_is_not_set_by_failed_authentications(self, keysvc: Keysvc) -> None:
        """A wrong secret, a mistyped key or a revoked key does not count as a use."""
        created = await _create(keysvc)
        revoked = await _create(keysvc)
        await keysvc.admin.revoke_key("acct_1", revoked.key.id, ADMIN)
        raw = created.raw_key
        attempts = [
            _wrong_secret(created),
            raw[:-1] + ("0" if raw[-1] != "0" else "1"),
            revoked.raw_key,
        ]
        for attempt in attempts:
            assert not (await keysvc.authorizer.authorize(attempt)).allowed
            assert not (await (await keysvc.replica()).authorizer.authorize(attempt)).allowed
        await keysvc.recorder.flush()
        for key in (await keysvc.admin.list_keys("acct_1")).keys:
            assert key.last_used_at is None


class Counting:
    """A store or cache that records every attribute Authorize touches on it: each use."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        return getattr(self._inner, name)


def _counted(keysvc: Keysvc) -> tuple[Authorizer, Counting, Counting]:
    """A replica's Authorizer (cold in-process cache) over keysvc's store, both counted; it
    shares keysvc's view of the change log."""
    store = Counting(keysvc.store)
    cache = Counting(MemoryKeyCache(clock=keysvc.monotonic))
    authorizer = Authorizer(
        store,
        cache,
        keysvc.verifier,
        keysvc.workers,
        keysvc.recorder,
        keysvc.change_log,
        clock=keysvc.clock,
        monotonic=keysvc.monotonic,
    )
    return authorizer, store, cache


async def _authorize_each(authorizer: Authorizer, values: Sequence[str]) -> list[Decision]:
    return [await authorizer.authorize(value) for value in values]


def _guesses(created: CreatedKey, count: int) -> list[str]:
    """`count` different wrong secrets for the key's id, as someone guessing would send."""
    guesses = {_wrong_secret(created) for _ in range(count)}
    assert len(guesses) == count
    return sorted(guesses)


def _holds_a_key(value: str) -> bool:
    """Whether a well-formed key (valid checksum) hides in `value`: never, in practice."""
    candidates = re.findall(r"ck_(?:live|test)_[0-9A-Za-z]{50}", value)
    return any(
        checksum(c[: -keys.CHECKSUM_LENGTH]) == c[-keys.CHECKSUM_LENGTH :] for c in candidates
    )


# Strings an API server may pass on from a hostile client: anything, and near shapes.
NOT_KEYS = st.one_of(
    st.text(),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Co", "So"])),
    st.binary().map(lambda raw: raw.decode("latin-1")),
    st.builds(
        str.__add__, st.sampled_from(["Bearer ", "bearer\t", "BEARER  ", "Basic "]), st.text()
    ),
    # The shape of a key, but the checksum was made up, or the prefix, length or
    # alphabet is off.
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["ck_live_", "ck_test_", "ck_prod_", "CK_LIVE_", "ck_live", ""]),
        st.text(keys.ALPHABET + "_-+/= é\x00", min_size=40, max_size=60),
        st.sampled_from(["", " ", "\n", "==", "\u200b"]),
    ),
    st.builds(
        "ck_live_{}{}".format,
        st.text(keys.ALPHABET, min_size=44, max_size=44),
        st.text(keys.ALPHABET, min_size=6, max_size=6),
    ),
)
HOSTILE = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    # The keysvc fixture is shared by all examples on purpose: its counts must stay 0.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class TestHostileInput:
    @HOSTILE
    @given(values=st.lists(NOT_KEYS, min_size=5, max_size=40))
    def test_malformed_keys_cost_no_store_or_cache_access(
        self, keysvc: KeysvcFixture, values: list[str]
    ) -> None:
        """Thousands of strings that are not keys are refused with 401 MALFORMED (or MISSING
        when they carry nothing), without the store, the cache or argon2 being touched."""
        values = [value for value in values if not _holds_a_key(value)]

        async def decide() -> tuple[list[Decision], Counting, Counting, int]:
            async with AsyncExitStack() as stack:
                running = await keysvc.enter(stack)
                authorizer, store, cache = _counted(running)
                decisions = await _authorize_each(authorizer, values)
                return decisions, store, cache, running.verifier.verifications

        decisions, store, cache, verifications = asyncio.run(decide())

        assert {d.reason for d in decisions} <= {Reason.MALFORMED, Reason.MISSING}
        assert all(d.http_status == 401 and d.grant is None for d in decisions)
        assert (store.touched, cache.touched) == ([], [])
        assert verifications == 0

    @async_test
    async def test_unknown_key_ids_cost_no_store_read(self, keysvc: Keysvc) -> None:
        """A flood of well-formed keys whose key ids do not exist, one id repeated or each
        one new, reads no key from the store and runs no argon2: the change log knows every
        key id there is."""
        authorizer, store, _ = _counted(keysvc)
        key_id = keys.new_key_id()
        repeated = [keys.generate(Mode.LIVE, key_id) for _ in range(50)]
        distinct = [keys.generate(Mode.LIVE, keys.new_key_id()) for _ in range(50)]

        decisions = await _authorize_each(authorizer, repeated + distinct)

        assert {d.reason for d in decisions} == {Reason.NOT_FOUND}
        assert store.touched.count("find") == 0
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_an_unknown_key_id_does_not_hide_other_keys(self, keysvc: Keysvc) -> None:
        """Remembering a missing key id refuses only that id: real keys still verify."""
        created = await _create(keysvc)
        authorizer, _, _ = _counted(keysvc)
        await authorizer.authorize(keys.generate(Mode.LIVE, keys.new_key_id()))

        assert (await authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED


class TestBruteForce:
    """Guessing the secret of a key whose id is known: 10 wrong secrets per key id a minute."""

    @async_test
    async def test_wrong_secrets_for_a_cold_key_run_argon2_at_most_ten_times(
        self, keysvc: Keysvc
    ) -> None:
        """Thirty different wrong secrets for an uncached key run argon2 ten times; the other
        twenty are NOT_FOUND without argon2 and without reading the store."""
        created = await _create(keysvc)
        authorizer, store, _ = _counted(keysvc)

        decisions = await _authorize_each(authorizer, _guesses(created, 30))

        assert {(d.reason, d.grant) for d in decisions} == {(Reason.NOT_FOUND, None)}
        assert keysvc.verifier.verifications == 10
        assert store.touched.count("find") == 10

    @async_test
    async def test_a_burst_of_concurrent_guesses_runs_argon2_at_most_ten_times(
        self, keysvc: Keysvc
    ) -> None:
        """Fifty different wrong secrets arriving together still run argon2 ten times at most."""
        created = await _create(keysvc)
        replica = await keysvc.replica()

        decisions = await within_deadline(
            asyncio.gather(*(replica.authorizer.authorize(g) for g in _guesses(created, 50)))
        )

        assert {d.reason for d in decisions} == {Reason.NOT_FOUND}
        assert replica.verifier.verifications == 10

    @async_test
    async def test_verification_resumes_when_the_minute_is_over(self, keysvc: Keysvc) -> None:
        """A minute after the first guess, secrets for the key id are verified again."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        await _authorize_each(replica.authorizer, _guesses(created, 30))
        replica.monotonic.advance(60)

        guess = await replica.authorizer.authorize(_wrong_secret(created))
        assert (guess.reason, replica.verifier.verifications) == (Reason.NOT_FOUND, 11)
        real = await replica.authorizer.authorize(created.raw_key)
        assert (real.reason, replica.verifier.verifications) == (Reason.ALLOWED, 12)

    @async_test
    async def test_refusals_from_the_tenth_wrong_secret_on_are_slowed_down(
        self, keysvc: Keysvc
    ) -> None:
        """From the tenth wrong secret in a minute, each refusal waits a quarter second."""
        created = await _create(keysvc)
        replica = await keysvc.replica()

        await _authorize_each(replica.authorizer, _guesses(created, 30))

        assert replica.delays == [0.25] * 21

    @async_test
    async def test_wrong_secrets_for_a_cached_key_are_counted_and_slowed_down(
        self, keysvc: Keysvc
    ) -> None:
        """Guesses at a cached key cost no argon2 but count against its key id all the same;
        the real key, right after, is allowed at once."""
        created = await _create(keysvc)
        assert (await keysvc.authorizer.authorize(created.raw_key)).allowed

        decisions = await _authorize_each(keysvc.authorizer, _guesses(created, 30))
        real = await keysvc.authorizer.authorize(created.raw_key)

        assert {d.reason for d in decisions} == {Reason.NOT_FOUND}
        assert keysvc.verifier.verifications == 0
        assert keysvc.delays == [0.25] * 21
        assert real.reason is Reason.ALLOWED

    @async_test
    async def test_a_cold_real_key_is_refused_while_its_key_id_is_throttled(
        self, keysvc: Keysvc
    ) -> None:
        """The price of the throttle: a real key this process has never verified, presented
        while its key id is throttled, is NOT_FOUND until the minute is over."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        await _authorize_each(replica.authorizer, _guesses(created, 10))

        refused = await replica.authorizer.authorize(created.raw_key)
        replica.monotonic.advance(60)
        allowed = await replica.authorizer.authorize(created.raw_key)

        assert (refused.reason, allowed.reason) == (Reason.NOT_FOUND, Reason.ALLOWED)

    @async_test
    async def test_a_cached_real_key_is_allowed_while_its_key_id_is_throttled(
        self, keysvc: Keysvc
    ) -> None:
        """A key another replica verified into the shared cache is allowed by a replica that
        throttles its key id: the cache is asked before the throttle."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        await _authorize_each(replica.authorizer, _guesses(created, 30))
        sibling = Authorizer(
            keysvc.store,
            replica.cache,
            CountingVerifier(),
            keysvc.workers,
            replica.recorder,
            replica.change_log,
            monotonic=replica.monotonic,
        )
        assert (await sibling.authorize(created.raw_key)).reason is Reason.ALLOWED

        decision = await replica.authorizer.authorize(created.raw_key, ["links:read"])

        assert decision.reason is Reason.ALLOWED
        assert replica.verifier.verifications == 10

    @async_test
    async def test_a_proven_secret_is_allowed_while_its_key_id_is_throttled(
        self, keysvc: Keysvc
    ) -> None:
        """A key this process verified once is still allowed, even after the cache has let it
        go, while guesses at its secret are throttled; and without argon2 again, since its
        secret was proven."""
        created = await _create(keysvc)
        replica = await keysvc.replica()
        assert (await replica.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED
        replica.monotonic.advance(3600)  # the cache's TTL: the key is cold again
        await _authorize_each(replica.authorizer, _guesses(created, 30))
        assert replica.verifier.verifications == 11

        decision = await replica.authorizer.authorize(created.raw_key)

        assert decision.reason is Reason.ALLOWED
        assert replica.verifier.verifications == 11

    @async_test
    async def test_a_key_used_from_the_cache_is_allowed_while_its_key_id_is_throttled(
        self, keysvc: Keysvc
    ) -> None:
        """A key this process answered from its cache is still allowed once the cache has let
        it go, while guesses at its secret are throttled; and without argon2, since the cache
        proved its secret."""
        created = await _create(keysvc)  # creating it cached it: no argon2 here
        assert (await keysvc.authorizer.authorize(created.raw_key)).reason is Reason.ALLOWED
        keysvc.monotonic.advance(3600)
        await _authorize_each(keysvc.authorizer, _guesses(created, 30))
        assert keysvc.verifier.verifications == 10

        decision = await keysvc.authorizer.authorize(created.raw_key)

        assert decision.reason is Reason.ALLOWED
        assert keysvc.verifier.verifications == 10

    @async_test
    async def test_keys_re_signed_for_the_other_mode_are_throttled_too(
        self, keysvc: Keysvc
    ) -> None:
        """Guesses re-signed for the key's other mode cost no argon2, and after ten of them no
        store read either."""
        created = await _create(keysvc, mode=Mode.TEST)
        authorizer, store, _ = _counted(keysvc)
        forged = [signed("ck_live_" + g[8 : -keys.CHECKSUM_LENGTH]) for g in _guesses(created, 30)]

        decisions = await _authorize_each(authorizer, forged)

        assert {d.reason for d in decisions} == {Reason.NOT_FOUND}
        assert (keysvc.verifier.verifications, store.touched.count("find")) == (0, 10)

    @async_test
    async def test_one_warning_per_key_id_per_minute(
        self, keysvc: Keysvc, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Fifty guesses log one warning naming the key id and when it is let go; another
        fifty a minute later log one more. No warning holds a secret."""
        caplog.set_level(logging.INFO, logger="keysvc")
        created = await _create(keysvc)
        replica = await keysvc.replica()
        first, second = _guesses(created, 50), _guesses(created, 50)

        await _authorize_each(replica.authorizer, first)
        warned_at = keysvc.clock.now
        keysvc.clock.advance(60)
        replica.monotonic.advance(60)
        await _authorize_each(replica.authorizer, second)

        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [
            f"key id {created.key.id}: 10 wrong secrets in the last 60s;"
            f" refusing further unverified secrets until {until}"
            for until in ("2026-03-01 12:01:01Z", "2026-03-01 12:02:01Z")
        ]
        assert warned_at.isoformat() == "2026-03-01T12:00:01+00:00"
        logged = caplog.text
        for raw in [created.raw_key, *first, *second]:
            assert raw not in logged
            assert secret_of(raw) not in logged
