"""Guessing at a key's secret, timed through a real server: past the per-key-id limit each
wrong secret is answered 0.25 s late, and the right secret is never delayed."""

from __future__ import annotations

import secrets
import time

import pytest
from keysvc_client import KeyServiceClient

from .harness import BASE62, NewKey, ServerFactory, verdict, with_checksum

pytestmark = pytest.mark.slow

ALLOWED = (200, "REASON_ALLOWED")
NOT_FOUND = (401, "REASON_NOT_FOUND")
# README, "Floods and guessing": after 10 wrong secrets within 60 s, each further one is
# refused unchecked and answered 0.25 s late.
LIMIT = 10
DELAY = 0.25
# Refusals past the limit that are timed, and calls with the right secret timed beside them.
TIMED = 3


def wrong_secret(real: str) -> str:
    """The real key's id with a random secret and a valid checksum: a well-formed guess."""
    return with_checksum(real[:20] + "".join(secrets.choice(BASE62) for _ in range(32)))


def timed_verdict(client: KeyServiceClient, api_key: str) -> tuple[tuple[int, str], float]:
    """The decision on `api_key` and the seconds from sending the request to its answer."""
    started = time.perf_counter()
    decision = client.authorize(api_key)
    return verdict(decision), time.perf_counter() - started


class TestGuessesAtACachedKey:
    def test_past_the_limit_are_answered_late_and_the_right_secret_at_once(
        self, public: KeyServiceClient, new_key: NewKey
    ) -> None:
        """Wrong secrets past the limit are NOT_FOUND after at least 0.25 s each, while the
        right secret, asked between them, is allowed in less."""
        real = new_key().secret
        assert verdict(public.authorize(real)) == ALLOWED
        for _ in range(LIMIT):
            assert verdict(public.authorize(wrong_secret(real))) == NOT_FOUND

        late, right = [], []
        for _ in range(TIMED):
            late.append(timed_verdict(public, wrong_secret(real)))
            right.append(timed_verdict(public, real))

        assert [decision for decision, _ in late] == [NOT_FOUND] * TIMED
        assert min(seconds for _, seconds in late) >= DELAY, late
        assert [decision for decision, _ in right] == [ALLOWED] * TIMED
        # The fastest of three, so that one slow call on a loaded machine is not a failure;
        # a right secret delayed like the guesses would make all three as slow.
        assert min(seconds for _, seconds in right) < DELAY, right


class TestGuessesAtAnUncachedKey:
    def test_past_the_limit_are_answered_late(self, server_factory: ServerFactory) -> None:
        """When the cache has let the key go, wrong secrets past the limit (refused without
        argon2) are still answered at least 0.25 s late, and the right secret still works."""
        ttl = 0.2
        server = server_factory.start("--cache-ttl-seconds", str(ttl))
        with server.client() as admin, server.client(admin=False) as public:
            real = admin.create_key("acct_guessing", "n", "live", ["links:read"]).secret
            # Seen right by this server, so the throttle never refuses it.
            assert verdict(public.authorize(real)) == ALLOWED
            # Time must pass for the entry to expire; nothing outside the server shows when.
            time.sleep(ttl * 3)
            for _ in range(LIMIT):
                assert verdict(public.authorize(wrong_secret(real))) == NOT_FOUND

            late = [timed_verdict(public, wrong_secret(real)) for _ in range(TIMED)]
            after = verdict(public.authorize(real))

        assert [decision for decision, _ in late] == [NOT_FOUND] * TIMED
        assert min(seconds for _, seconds in late) >= DELAY, late
        assert after == ALLOWED
