"""Authorize, wired to KeyService over one SQLite store and cache as keysvc.server wires them."""

from __future__ import annotations

import asyncio

import pytest

from keysvc import keys
from keysvc.authorizer import Authorizer
from keysvc.errors import InvalidArgument
from keysvc.hashing import Argon2Parameters
from keysvc.model import CreatedKey, KeyGrant, Mode, Reason

from .conftest import Keysvc
from .support import CountingVerifier, async_test, signed, within_deadline

LINKS = ("links:read", "links:write")


async def _create(
    keysvc: Keysvc,
    *,
    account_id: str = "acct_1",
    mode: Mode = Mode.LIVE,
    scopes: tuple[str, ...] = LINKS,
) -> CreatedKey:
    created = await keysvc.service.create_key(account_id, "Production server", mode, scopes)
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
        decision = await keysvc.authorizer.authorize(created.secret, ["links:read"])
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
        decision = await keysvc.authorizer.authorize(template.format(key=created.secret))
        assert decision.reason is Reason.ALLOWED

    @async_test
    async def test_no_required_scopes_means_any_valid_key(self, keysvc: Keysvc) -> None:
        """With nothing required, any valid key of either mode is allowed."""
        for mode in Mode:
            created = await _create(keysvc, mode=mode, scopes=("events:read",))
            assert (await keysvc.authorizer.authorize(created.secret)).reason is Reason.ALLOWED

    @async_test
    async def test_works_on_a_cold_cache(self, keysvc: Keysvc) -> None:
        """A replica that never saw the key verifies it from the store and allows it."""
        created = await _create(keysvc)
        replica = keysvc.replica()
        decision = await replica.authorizer.authorize(created.secret, ["links:write"])
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
        raw = created.secret
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
        cold = await keysvc.replica().authorizer.authorize(forged)
        assert (hot.reason, hot.http_status, hot.grant) == (Reason.NOT_FOUND, 401, None)
        assert (cold.reason, cold.http_status, cold.grant) == (Reason.NOT_FOUND, 401, None)

    @async_test
    async def test_the_real_key_still_works_after_a_wrong_secret(self, keysvc: Keysvc) -> None:
        """Someone guessing secrets for a key id does not lock its owner out."""
        created = await _create(keysvc)
        replica = keysvc.replica()
        assert (
            await replica.authorizer.authorize(_wrong_secret(created))
        ).reason is Reason.NOT_FOUND
        assert (await replica.authorizer.authorize(created.secret)).reason is Reason.ALLOWED

    @async_test
    async def test_a_key_re_signed_for_the_other_mode_is_not_found(self, keysvc: Keysvc) -> None:
        """A test key re-prefixed ck_live_ with a valid checksum is not the live key it claims."""
        created = await _create(keysvc, mode=Mode.TEST)
        forged = signed("ck_live_" + created.secret[8 : -keys.CHECKSUM_LENGTH])
        assert keys.parse(forged) is not None
        assert (await keysvc.authorizer.authorize(forged)).reason is Reason.NOT_FOUND
        assert (await keysvc.replica().authorizer.authorize(forged)).reason is Reason.NOT_FOUND


class TestScopesAndMode:
    @async_test
    async def test_a_missing_scope_is_insufficient(self, keysvc: Keysvc) -> None:
        """A valid key without a required scope is INSUFFICIENT_SCOPE (403), naming the scope."""
        created = await _create(keysvc, scopes=("links:read",))
        decision = await keysvc.authorizer.authorize(created.secret, ["webhooks:read"])
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        assert (decision.allowed, decision.http_status) == (False, 403)
        assert decision.missing_scopes == ("webhooks:read",)
        assert decision.grant is not None and decision.grant.key_id == created.key.id

    @async_test
    async def test_every_required_scope_must_be_held(self, keysvc: Keysvc) -> None:
        """Holding some required scopes is not enough; the missing ones are listed, sorted."""
        created = await _create(keysvc, scopes=("links:read", "events:read"))
        decision = await keysvc.authorizer.authorize(
            created.secret, ["sessions:write", "links:read", "customers:read"]
        )
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        assert decision.missing_scopes == ("customers:read", "sessions:write")
        both = await keysvc.authorizer.authorize(created.secret, ["events:read", "links:read"])
        assert both.reason is Reason.ALLOWED

    @async_test
    async def test_write_does_not_imply_read(self, keysvc: Keysvc) -> None:
        """A key with links:write alone may not list links."""
        created = await _create(keysvc, scopes=("links:write",))
        decision = await keysvc.authorizer.authorize(created.secret, ["links:read"])
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
        decision = await keysvc.authorizer.authorize(created.secret, ["links:read"], required)
        assert decision.reason is Reason.WRONG_MODE
        assert (decision.allowed, decision.http_status) == (False, 403)
        assert decision.grant is not None and decision.grant.mode is key_mode

    @async_test
    async def test_the_required_mode_is_allowed(self, keysvc: Keysvc) -> None:
        """A key of the required mode is allowed."""
        created = await _create(keysvc, mode=Mode.TEST)
        decision = await keysvc.authorizer.authorize(created.secret, ["links:read"], Mode.TEST)
        assert decision.reason is Reason.ALLOWED

    @async_test
    async def test_an_unknown_required_scope_is_the_callers_error(self, keysvc: Keysvc) -> None:
        """Requiring a scope outside the catalogue is InvalidArgument, not a decision."""
        created = await _create(keysvc)
        with pytest.raises(InvalidArgument, match="payouts:write"):
            await keysvc.authorizer.authorize(created.secret, ["payouts:write"])
        with pytest.raises(InvalidArgument):
            await keysvc.authorizer.authorize("", ["payouts:write"])


class TestRevoked:
    @async_test
    async def test_the_very_next_authorize_is_revoked(self, keysvc: Keysvc) -> None:
        """Revocation is immediate: the next Authorize of the key is REVOKED (401)."""
        created = await _create(keysvc)
        assert (await keysvc.authorizer.authorize(created.secret)).reason is Reason.ALLOWED
        await keysvc.service.revoke_key("acct_1", created.key.id)
        decision = await keysvc.authorizer.authorize(created.secret)
        assert decision.reason is Reason.REVOKED
        assert (decision.allowed, decision.http_status) == (False, 401)
        again = await keysvc.authorizer.authorize(created.secret, ["links:read"])
        assert again.reason is Reason.REVOKED

    @async_test
    async def test_is_revoked_on_a_cold_cache(self, keysvc: Keysvc) -> None:
        """A replica that never cached the key reads the revocation from the store."""
        created = await _create(keysvc)
        await keysvc.service.revoke_key("acct_1", created.key.id)
        replica = keysvc.replica()
        assert (await replica.authorizer.authorize(created.secret)).reason is Reason.REVOKED
        assert (await replica.authorizer.authorize(created.secret)).reason is Reason.REVOKED

    @async_test
    async def test_a_wrong_secret_for_a_revoked_key_is_not_found(self, keysvc: Keysvc) -> None:
        """Only the real key learns that it was revoked; a guess is still NOT_FOUND."""
        created = await _create(keysvc)
        await keysvc.service.revoke_key("acct_1", created.key.id)
        decision = await keysvc.authorizer.authorize(_wrong_secret(created))
        assert decision.reason is Reason.NOT_FOUND

    @async_test
    async def test_revoking_one_key_leaves_the_others(self, keysvc: Keysvc) -> None:
        """Revoking one integration's key does not affect another key of the account."""
        old, new = await _create(keysvc), await _create(keysvc)
        await keysvc.service.revoke_key("acct_1", old.key.id)
        assert (await keysvc.authorizer.authorize(new.secret)).reason is Reason.ALLOWED

    @async_test
    async def test_a_revoke_during_a_cold_look_up_wins(self, keysvc: Keysvc) -> None:
        """A cold look-up that read the key before its revocation still decides REVOKED."""
        created = await _create(keysvc)
        replica = keysvc.replica(authorizer_class=PausingAuthorizer)
        authorizer = replica.authorizer
        assert isinstance(authorizer, PausingAuthorizer)

        pending = asyncio.create_task(authorizer.authorize(created.secret, ["links:read"]))
        stale = await within_deadline(authorizer.read_from_store.get())
        assert stale.revoked is False  # the look-up read the key while it was active
        await replica.service.revoke_key("acct_1", created.key.id)
        authorizer.resume.set()
        decision = await within_deadline(pending)

        assert decision.reason is Reason.REVOKED
        cached = await replica.cache.get(created.key.id)
        assert cached is not None and cached.revoked
        assert (await authorizer.authorize(created.secret)).reason is Reason.REVOKED


class TestCost:
    @async_test
    async def test_a_new_key_is_authorized_without_argon2(self, keysvc: Keysvc) -> None:
        """Creating a key warms the cache: its first Authorize needs no argon2."""
        created = await _create(keysvc)
        for _ in range(10):
            assert (await keysvc.authorizer.authorize(created.secret)).reason is Reason.ALLOWED
        assert keysvc.verifier.verifications == 0

    @async_test
    async def test_a_cold_key_is_verified_once_however_many_ask(self, keysvc: Keysvc) -> None:
        """Fifty concurrent Authorize calls for one uncached key run argon2 once between them."""
        created = await _create(keysvc)
        replica = keysvc.replica()
        decisions = await within_deadline(
            asyncio.gather(*(replica.authorizer.authorize(created.secret) for _ in range(50)))
        )
        assert {d.reason for d in decisions} == {Reason.ALLOWED}
        assert replica.verifier.verifications == 1
        await replica.authorizer.authorize(created.secret)
        assert replica.verifier.verifications == 1

    @async_test
    async def test_concurrent_wrong_secrets_are_verified_once(self, keysvc: Keysvc) -> None:
        """Fifty concurrent calls with one wrong secret run argon2 once between them."""
        created = await _create(keysvc)
        replica = keysvc.replica()
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
        replica = keysvc.replica()
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

        replica = keysvc.replica(verifier=current)
        assert (await replica.authorizer.authorize(created.secret)).reason is Reason.ALLOWED

        found = keysvc.store.find(created.key.id)
        assert found is not None
        assert current.needs_rehash(found.verifier) is False
        assert current.verify(found.verifier, created.secret) is True
        assert (
            await keysvc.replica().authorizer.authorize(created.secret)
        ).reason is Reason.ALLOWED


class TestLastUsed:
    @async_test
    async def test_is_set_by_an_allowed_authorize(self, keysvc: Keysvc) -> None:
        """After an allowed Authorize and a flush, the key's last_used_at is the time of use."""
        created = await _create(keysvc)
        used_at = keysvc.clock.advance(60)
        await keysvc.authorizer.authorize(created.secret)
        keysvc.clock.advance(60)
        await keysvc.recorder.flush()
        key = await keysvc.service.get_key("acct_1", created.key.id)
        assert key.last_used_at == used_at

    @async_test
    async def test_keeps_the_latest_use(self, keysvc: Keysvc) -> None:
        """Several uses between flushes leave the latest one as last_used_at."""
        created = await _create(keysvc)
        await keysvc.authorizer.authorize(created.secret)
        latest = keysvc.clock.advance(30)
        await keysvc.authorizer.authorize(created.secret)
        await keysvc.recorder.flush()
        assert (await keysvc.service.get_key("acct_1", created.key.id)).last_used_at == latest

    @async_test
    async def test_is_set_when_the_key_authenticated_but_lacked_a_scope(
        self, keysvc: Keysvc
    ) -> None:
        """A refusal for scope still follows a successful authentication, so it counts as a use."""
        created = await _create(keysvc, scopes=("links:read",))
        decision = await keysvc.authorizer.authorize(created.secret, ["customers:write"])
        assert decision.reason is Reason.INSUFFICIENT_SCOPE
        await keysvc.recorder.flush()
        key = await keysvc.service.get_key("acct_1", created.key.id)
        assert key.last_used_at == keysvc.clock.now

    @async_test
    async def test_is_not_set_by_failed_authentications(self, keysvc: Keysvc) -> None:
        """A wrong secret, a mistyped key or a revoked key does not count as a use."""
        created = await _create(keysvc)
        revoked = await _create(keysvc)
        await keysvc.service.revoke_key("acct_1", revoked.key.id)
        raw = created.secret
        attempts = [
            _wrong_secret(created),
            raw[:-1] + ("0" if raw[-1] != "0" else "1"),
            revoked.secret,
        ]
        for attempt in attempts:
            assert not (await keysvc.authorizer.authorize(attempt)).allowed
            assert not (await keysvc.replica().authorizer.authorize(attempt)).allowed
        await keysvc.recorder.flush()
        for key in (await keysvc.service.list_keys("acct_1")).keys:
            assert key.last_used_at is None
