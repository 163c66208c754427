"""Protected routes over HTTP, the same specification for every integration: Starlette's route
decorator, the ASGI middleware, and Flask's view decorator, each a real app behind its
framework's test client, against a real keysvc.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from keysvc_client import KeyServiceClient

from tests.e2e.harness import (
    KEY_PATTERN,
    NEAR_CACHE_GRACE,
    ServerFactory,
    ServerProcess,
    poll,
    with_checksum,
)

from .apps import FLAVOURS, Answer, Api, build
from .conftest import TIMEOUT, Keys

pytestmark = pytest.mark.slow

MakeApi = Callable[..., Api]

# The docs promise the Guard finds keysvc again "within about a second" of its return: gRPC's
# reconnect backoff is capped at 1 s, with up to 20 % jitter.
RECONNECT = 1.5


@pytest.fixture(params=FLAVOURS)
def make_api(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[MakeApi]:
    """make_api(target=..., **guard_options): the flavour's app, against the shared keysvc
    unless `target` says otherwise."""
    made: list[Api] = []

    def make(target: str = server.target, **options: Any) -> Api:
        api = build(request.param, target, **{"timeout": TIMEOUT, **options})
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()


def assert_refused(answer: Answer, status: int, reason: str) -> None:
    assert (answer.status, answer.body["error"]["reason"]) == (status, reason), answer.body
    assert answer.body["error"]["status"] == status
    assert answer.body["error"]["message"]
    assert answer.headers["content-type"].startswith("application/json")


class TestAllowed:
    def test_the_handler_gets_the_keys_id_account_mode_and_scopes(
        self, api: Api, keys: Keys, account: str
    ) -> None:
        """A key holding the route's scope reaches the handler, which sees whose key it is."""
        created = keys.new(["links:read", "sessions:write"], mode="live")
        answer = api.get("/api/v1/links", f"Bearer {created.secret}")
        assert answer.status == 200
        assert answer.body == {
            "handler": "list_links",
            "key": {
                "key_id": created.key.id,
                "account_id": account,
                "mode": "live",
                "scopes": ["links:read", "sessions:write"],
            },
        }
        assert "www-authenticate" not in answer.headers

    def test_each_route_needs_its_own_scope(self, api: Api, keys: Keys) -> None:
        """links:write opens POST and not GET; a key with both opens both."""
        writer = keys.bearer(["links:write"])
        both = keys.bearer(["links:read", "links:write"])
        assert api.post("/api/v1/links", writer).status == 201
        assert_refused(api.get("/api/v1/links", writer), 403, "insufficient_scope")
        assert api.get("/api/v1/links", both).status == 200
        assert api.post("/api/v1/links", both).status == 201

    def test_a_route_declared_without_scopes_takes_any_valid_key(
        self, api: Api, keys: Keys
    ) -> None:
        answer = api.get("/api/v1/me", keys.bearer(["events:read"], mode="test"))
        assert (answer.status, answer.body["key"]["mode"]) == (200, "test")

    def test_the_raw_key_without_bearer_is_accepted(self, api: Api, keys: Keys) -> None:
        """keysvc takes the whole header value or the bare key, as the product doc's curl does."""
        assert api.get("/api/v1/links", keys.new().secret).status == 200

    def test_unprotected_routes_need_no_key(self, api: Api) -> None:
        assert (api.get("/health").status, api.get("/health").body) == (200, {"status": "ok"})


class TestUnauthorized:
    def test_no_key_is_401_with_a_bare_bearer_challenge(self, api: Api) -> None:
        """RFC 6750 §3.1: a request without credentials gets the challenge without an error."""
        answer = api.get("/api/v1/links")
        assert_refused(answer, 401, "missing")
        assert answer.headers["www-authenticate"] == 'Bearer realm="api"'
        assert api.handled == []

    @pytest.mark.parametrize("header", ["", "Bearer", "Bearer   ", "   "])
    def test_an_empty_header_is_a_missing_key(self, api: Api, header: str) -> None:
        assert_refused(api.get("/api/v1/links", header), 401, "missing")

    @pytest.mark.parametrize(
        "header",
        [
            "Bearer not-a-key",
            "Basic dXNlcjpwYXNz",
            "Bearer ck_live_" + "a" * 50,  # the right shape, the wrong checksum
            "Bearer " + "x" * 5000,  # far longer than any key: refused without asking keysvc
            "Bearer ck_live_<script>",
        ],
    )
    def test_a_malformed_key_is_401_invalid_token(self, api: Api, header: str) -> None:
        answer = api.get("/api/v1/links", header)
        assert_refused(answer, 401, "malformed")
        assert answer.headers["www-authenticate"].startswith(
            'Bearer realm="api", error="invalid_token", error_description="'
        )
        assert api.handled == []

    def test_an_unknown_key_is_401_not_found(self, api: Api) -> None:
        forged = with_checksum("ck_live_" + "Zz9" * 4 + "q" * 32)  # no such key id
        answer = api.get("/api/v1/links", f"Bearer {forged}")
        assert_refused(answer, 401, "not_found")
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]

    def test_a_revoked_key_is_refused_on_the_very_next_request(self, api: Api, keys: Keys) -> None:
        """Revocation is immediate: no request after RevokeKey returns gets through."""
        created = keys.new()
        header = f"Bearer {created.secret}"
        assert api.get("/api/v1/links", header).status == 200
        keys.revoke(created)
        answer = api.get("/api/v1/links", header)
        assert_refused(answer, 401, "revoked")
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert api.handled == ["list_links"]

    def test_two_keys_in_one_request_are_refused(self, api: Api, keys: Keys) -> None:
        """Two Authorization headers are ambiguous: judged on neither, even if both are valid."""
        answer = api.get("/api/v1/links", [keys.bearer(), keys.bearer()])
        assert_refused(answer, 401, "malformed")


class TestForbidden:
    def test_a_missing_scope_is_403_naming_it(self, api: Api, keys: Keys) -> None:
        answer = api.post("/api/v1/links", keys.bearer(["links:read"]), json={"name": "x"})
        assert_refused(answer, 403, "insufficient_scope")
        assert answer.body["error"]["missing_scopes"] == ["links:write"]
        assert answer.headers["www-authenticate"] == (
            'Bearer realm="api", error="insufficient_scope", scope="links:write"'
        )
        assert api.handled == []

    def test_a_staging_app_refuses_live_keys(self, make_api: MakeApi, keys: Keys) -> None:
        """required_mode="test": live keys are refused with 403, test keys pass."""
        staging = make_api(required_mode="test")
        refused = staging.get("/api/v1/links", keys.bearer(mode="live"))
        assert_refused(refused, 403, "wrong_mode")
        assert refused.body["error"]["message"] == (
            "live keys are not accepted here: use a test key"
        )
        assert staging.get("/api/v1/links", keys.bearer(mode="test")).status == 200
        assert staging.handled == ["list_links"]

    def test_a_live_app_refuses_test_keys(self, make_api: MakeApi, keys: Keys) -> None:
        live = make_api(required_mode="live")
        assert_refused(live.get("/api/v1/me", keys.bearer(mode="test")), 403, "wrong_mode")
        assert live.get("/api/v1/me", keys.bearer(mode="live")).status == 200


class TestKeysvcCannotDecide:
    def test_keysvc_down_is_503_never_200(
        self, make_api: MakeApi, nowhere: str, keys: Keys
    ) -> None:
        """Nothing listening at the target: 503 with Retry-After, and no handler runs."""
        api = make_api(target=nowhere)
        started = time.monotonic()
        answer = api.get("/api/v1/links", keys.bearer())
        assert_refused(answer, 503, "unavailable")
        assert answer.headers["retry-after"] == "1"
        assert "www-authenticate" not in answer.headers
        assert api.handled == []
        # Refused connections fail fast: the API server does not hang on keysvc.
        assert time.monotonic() - started < TIMEOUT

    def test_no_key_is_still_401_while_keysvc_is_down(
        self, make_api: MakeApi, nowhere: str
    ) -> None:
        """A request without a key needs no keysvc to be refused."""
        assert_refused(make_api(target=nowhere).get("/api/v1/links"), 401, "missing")

    def test_keysvc_stopping_turns_200_into_503_and_back(
        self, make_api: MakeApi, servers: ServerFactory
    ) -> None:
        """The app keeps one Guard: 200, keysvc stops (503), keysvc returns on its port and the
        next requests find it within about a second (200)."""
        first = servers.start()
        with first.client() as admin:
            created = admin.create_key("acct_outage", "API server", "live", ["links:read"])
        header = f"Bearer {created.secret}"
        api = make_api(target=first.target)
        assert api.get("/api/v1/links", header).status == 200

        assert first.stop() == 0
        # The Guard's near cache may allow the hot key until the lease it holds runs out; from
        # then on keysvc's silence is a 503, never a guess.
        while_cached: list[int] = []

        def refused() -> Answer | None:
            answer = api.get("/api/v1/links", header)
            while_cached.append(answer.status)
            return answer if answer.status == 503 else None

        assert_refused(
            poll(refused, timeout=NEAR_CACHE_GRACE, what="503 once the lease ran out"),
            503,
            "unavailable",
        )
        assert set(while_cached) <= {200, 503}

        servers.start("--listen", first.target, data_dir=first.data_dir)
        back = time.monotonic()  # keysvc answers health checks again
        # An unknown key id is answered without an argon2 verification: what is timed is the
        # Guard finding keysvc, not keysvc's first look at a key.
        unknown = f"Bearer {with_checksum('ck_live_' + 'Zz9' * 4 + 'q' * 32)}"
        poll(
            lambda: api.get("/api/v1/links", unknown).status != 503,
            timeout=RECONNECT,
            what="the Guard to find keysvc again",
        )
        assert time.monotonic() - back < RECONNECT
        assert api.get("/api/v1/links", header).status == 200
        assert api.handled == ["list_links"] * (1 + while_cached.count(200) + 1)

    def test_a_frozen_keysvc_is_503_within_the_deadline(
        self, make_api: MakeApi, servers: ServerFactory
    ) -> None:
        """keysvc accepts the connection but never answers: the deadline ends the wait."""
        frozen = servers.start()
        with frozen.client() as admin:
            header = f"Bearer {admin.create_key('acct_f', 'f', 'live', ['links:read']).secret}"
        api = make_api(target=frozen.target, timeout=0.2)
        api.get("/health")
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = api.get("/api/v1/links", header)
            elapsed = time.monotonic() - started
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        assert_refused(answer, 503, "unavailable")
        assert elapsed < 2.0
        assert api.handled == []


class TestSecrets:
    def test_no_answer_echoes_the_key(
        self, api: Api, keys: Keys, admin: KeyServiceClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Bodies and headers of every refusal, and the client's log, hold no key."""
        created = keys.new(["links:read"])
        header = f"Bearer {created.secret}"
        answers = [api.post("/api/v1/links", header), api.get("/api/v1/links", header)]
        keys.revoke(created)
        answers.append(api.get("/api/v1/links", header))
        answers.append(api.get("/api/v1/links", "Bearer " + created.secret[:-1] + "x"))
        for answer in answers:
            text = repr(answer.body) + repr(dict(answer.headers))
            assert created.secret not in text
            assert not KEY_PATTERN.search(text)
        assert created.secret not in caplog.text
