"""Bad input on every RPC: malformed requests are INVALID_ARGUMENT naming the field, other
accounts' keys are NOT_FOUND, and keys that are not real keys are refused as decisions."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any, NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2
from keysvc_client import KeyServiceClient, KeysvcError, NotFound, keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from .harness import BASE62, NewKey, ServerFactory, ServerProcess, rpc_error, verdict, with_checksum

pytestmark = pytest.mark.slow

pb = keysvc_pb2
VALID_ID = "AbCdEf123456"  # well-formed, and no key has it
# An enum number the contract does not define; proto3 lets a client send it anyway.
UNKNOWN_ENUM: Any = 42
CATALOGUE = (
    "links:read, links:write, sessions:read, sessions:write, webhooks:read, webhooks:write,"
    " events:read, customers:read, customers:write"
)


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _raw_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _create(**fields: Any) -> pb.CreateKeyRequest:
    request = {
        "account_id": "acct_bad",
        "name": "n",
        "mode": pb.MODE_LIVE,
        "scopes": ["links:read"],
    }
    return pb.CreateKeyRequest(**{**request, **fields})


class Case(NamedTuple):
    method: str
    request: Any
    field: str


INVALID = {
    # CreateKey
    "create/account-empty": Case("CreateKey", _create(account_id=""), "account_id"),
    "create/account-space": Case("CreateKey", _create(account_id="acct 1"), "account_id"),
    "create/account-leading-dash": Case("CreateKey", _create(account_id="-acct"), "account_id"),
    "create/account-65-chars": Case("CreateKey", _create(account_id="a" * 65), "account_id"),
    "create/account-newline": Case("CreateKey", _create(account_id="acct\n"), "account_id"),
    "create/name-empty": Case("CreateKey", _create(name=""), "name"),
    "create/name-blank": Case("CreateKey", _create(name="   "), "name"),
    "create/name-101-chars": Case("CreateKey", _create(name="n" * 101), "name"),
    "create/name-10KB": Case("CreateKey", _create(name="n" * 10_000), "name"),
    "create/name-newline": Case("CreateKey", _create(name="prod\nINFO forged"), "name"),
    "create/name-invisible": Case("CreateKey", _create(name="prod\u200bserver"), "name"),
    "create/mode-unspecified": Case("CreateKey", _create(mode=pb.MODE_UNSPECIFIED), "mode"),
    "create/mode-unknown": Case("CreateKey", _create(mode=UNKNOWN_ENUM), "mode"),
    "create/no-scopes": Case("CreateKey", _create(scopes=[]), "scopes"),
    "create/unknown-scope": Case(
        "CreateKey", _create(scopes=["links:read", "links:admin"]), "scopes"
    ),
    "create/empty-scope": Case("CreateKey", _create(scopes=[""]), "scopes"),
    # GetKey
    "get/account-empty": Case("GetKey", pb.GetKeyRequest(account_id="", id=VALID_ID), "account_id"),
    "get/account-bad": Case(
        "GetKey", pb.GetKeyRequest(account_id="a/b", id=VALID_ID), "account_id"
    ),
    "get/id-empty": Case("GetKey", pb.GetKeyRequest(account_id="acct_bad", id=""), "id"),
    "get/id-short": Case("GetKey", pb.GetKeyRequest(account_id="acct_bad", id="abc"), "id"),
    "get/id-long": Case("GetKey", pb.GetKeyRequest(account_id="acct_bad", id=VALID_ID + "7"), "id"),
    "get/id-punctuation": Case(
        "GetKey", pb.GetKeyRequest(account_id="acct_bad", id="abc-def_ghij"), "id"
    ),
    "get/id-is-a-raw-key": Case(
        "GetKey", pb.GetKeyRequest(account_id="acct_bad", id="ck_live_" + "a" * 50), "id"
    ),
    # ListKeys
    "list/account-empty": Case("ListKeys", pb.ListKeysRequest(account_id=""), "account_id"),
    "list/account-bad": Case("ListKeys", pb.ListKeysRequest(account_id="é"), "account_id"),
    "list/page-size-negative": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_size=-1), "page_size"
    ),
    "list/page-size-over-max": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_size=501), "page_size"
    ),
    "list/page-token-garbage": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_token="garbage"), "page_token"
    ),
    "list/page-token-punctuation": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_token="!!!"), "page_token"
    ),
    "list/page-token-non-ascii": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_token="jeton-é"), "page_token"
    ),
    "list/page-token-json-number": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", page_token=_token(7)), "page_token"
    ),
    "list/page-token-naive-time": Case(
        "ListKeys",
        pb.ListKeysRequest(
            account_id="acct_bad", page_token=_token({"t": "2026-01-01T00:00:00", "i": VALID_ID})
        ),
        "page_token",
    ),
    "list/page-token-time-before-year-1-utc": Case(
        "ListKeys",
        pb.ListKeysRequest(
            account_id="acct_bad",
            page_token=_token({"t": "0001-01-01T00:00:00+01:00", "i": VALID_ID}),
        ),
        "page_token",
    ),
    "list/page-token-time-after-year-9999-utc": Case(
        "ListKeys",
        pb.ListKeysRequest(
            account_id="acct_bad",
            page_token=_token({"t": "9999-12-31T23:59:59-01:00", "i": VALID_ID}),
        ),
        "page_token",
    ),
    "list/page-token-deeply-nested": Case(
        "ListKeys",
        pb.ListKeysRequest(account_id="acct_bad", page_token=_raw_token(b"[" * 5000)),
        "page_token",
    ),
    "list/mode-unknown": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", mode=UNKNOWN_ENUM), "mode"
    ),
    "list/status-unknown": Case(
        "ListKeys", pb.ListKeysRequest(account_id="acct_bad", status=UNKNOWN_ENUM), "status"
    ),
    # ListAuditEvents
    "audit/account-empty": Case(
        "ListAuditEvents", pb.ListAuditEventsRequest(account_id=""), "account_id"
    ),
    "audit/account-bad": Case(
        "ListAuditEvents", pb.ListAuditEventsRequest(account_id="acct 1"), "account_id"
    ),
    "audit/page-size-negative": Case(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(account_id="acct_bad", page_size=-1),
        "page_size",
    ),
    "audit/page-size-over-max": Case(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(account_id="acct_bad", page_size=501),
        "page_size",
    ),
    "audit/page-token-garbage": Case(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(account_id="acct_bad", page_token="garbage"),
        "page_token",
    ),
    "audit/page-token-of-list-keys": Case(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(
            account_id="acct_bad",
            page_token=_token({"t": "2026-01-01T00:00:00+00:00", "i": VALID_ID}),
        ),
        "page_token",
    ),
    # RevokeKey
    "revoke/account-empty": Case(
        "RevokeKey", pb.RevokeKeyRequest(account_id="", id=VALID_ID), "account_id"
    ),
    "revoke/id-empty": Case("RevokeKey", pb.RevokeKeyRequest(account_id="acct_bad", id=""), "id"),
    "revoke/id-bad": Case(
        "RevokeKey", pb.RevokeKeyRequest(account_id="acct_bad", id="x" * 11), "id"
    ),
    # Authorize: only the calling server's own mistakes are errors.
    "authorize/unknown-required-scope": Case(
        "Authorize",
        pb.AuthorizeRequest(api_key="ck_live_whatever", required_scopes=["links:admin"]),
        "required_scopes",
    ),
    "authorize/unknown-required-mode": Case(
        "Authorize",
        pb.AuthorizeRequest(api_key="ck_live_whatever", required_mode=UNKNOWN_ENUM),
        "required_mode",
    ),
}


class TestInvalidArgument:
    @pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
    def test_is_refused_naming_the_field(
        self, server: ServerProcess, stub: keysvc_pb2_grpc.KeyServiceStub, case: Case
    ) -> None:
        """A malformed request is INVALID_ARGUMENT, and the message starts with the field name."""
        call = getattr(stub, case.method)

        err = rpc_error(lambda: call(case.request, metadata=server.admin_metadata, timeout=10))

        details = err.details() or ""
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"{case.field}:"), details

    @pytest.mark.parametrize(
        "request_",
        [
            _create(scopes=["links:read", "links:admin"]),
            _create(scopes=[]),
        ],
        ids=["unknown-scope", "no-scopes"],
    )
    def test_scope_errors_list_the_valid_scopes(
        self, server: ServerProcess, stub: keysvc_pb2_grpc.KeyServiceStub, request_: Any
    ) -> None:
        """An unknown or missing scope is answered with the whole catalogue to choose from."""
        err = rpc_error(
            lambda: stub.CreateKey(request_, metadata=server.admin_metadata, timeout=10)
        )

        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"valid scopes are {CATALOGUE}" in (err.details() or "")

    def test_unknown_scope_is_named(self, admin: KeyServiceClient, account: str) -> None:
        """The message names the unknown scope that was asked for."""
        with pytest.raises(KeysvcError) as raised:
            admin.create_key(account, "n", "live", ["links:read", "payouts:write"])

        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'payouts:write'" in raised.value.details

    def test_unknown_required_scope_with_a_valid_key(
        self, public: KeyServiceClient, new_key: NewKey
    ) -> None:
        """An unknown required scope is the caller's bug: INVALID_ARGUMENT, even for a good key."""
        created = new_key()

        with pytest.raises(KeysvcError) as raised:
            public.authorize(created.secret, ["links:admin"])

        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details.startswith("required_scopes:")
        assert f"valid scopes are {CATALOGUE}" in raised.value.details

    def test_nothing_is_created_by_a_refused_request(
        self, admin: KeyServiceClient, account: str
    ) -> None:
        """After refused CreateKey calls the account still has no keys."""
        for scopes in ([], ["links:admin"]):
            with pytest.raises(KeysvcError):
                admin.create_key(account, "n", "live", scopes)

        assert list(admin.list_keys(account).keys) == []


class TestLimitsAccepted:
    def test_longest_name_and_account_id(self, admin: KeyServiceClient) -> None:
        """A 100-character name and a 64-character account id are accepted as they are."""
        account_id = "a" + secrets.token_hex(8) + "." * 47
        created = admin.create_key(account_id, "N" * 100, "test", ["links:read"])

        assert created.key.name == "N" * 100
        assert created.key.account_id == account_id

    def test_unicode_name(self, new_key: NewKey) -> None:
        """A name in any script, emoji included, is stored unchanged."""
        created = new_key(name="Boutique Zürich ☕ 東京")

        assert created.key.name == "Boutique Zürich ☕ 東京"

    def test_largest_page_size(
        self, admin: KeyServiceClient, new_key: NewKey, account: str
    ) -> None:
        """page_size 500, the maximum, is accepted."""
        created = new_key()

        page = admin.list_keys(account, page_size=500)

        assert [key.id for key in page.keys] == [created.key.id]


class TestNotFound:
    def test_unknown_key_id(self, admin: KeyServiceClient, account: str, new_key: NewKey) -> None:
        """GetKey and RevokeKey of a well-formed id that does not exist are NOT_FOUND."""
        new_key()

        with pytest.raises(NotFound):
            admin.get_key(account, VALID_ID)
        with pytest.raises(NotFound):
            admin.revoke_key(account, VALID_ID)

    def test_another_accounts_key(
        self, admin: KeyServiceClient, public: KeyServiceClient, account: str, new_key: NewKey
    ) -> None:
        """Account B can neither see nor revoke account A's key: NOT_FOUND, and it stays active."""
        theirs = new_key(account_id=f"{account}-a")

        with pytest.raises(NotFound):
            admin.get_key(account, theirs.key.id)
        with pytest.raises(NotFound):
            admin.revoke_key(account, theirs.key.id)

        assert admin.get_key(f"{account}-a", theirs.key.id).status == pb.KEY_STATUS_ACTIVE
        assert verdict(public.authorize(theirs.secret)) == (200, "REASON_ALLOWED")


def _body(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


@pytest.fixture(scope="module")
def real(server: ServerProcess) -> str:
    """A live key the near misses are made from."""
    with server.client() as client:
        return client.create_key("acct_near_miss", "n", "live", ["links:read"]).secret


# Near misses of a real key, and plain garbage, as API servers may pass them on.
MALFORMED = {
    "garbage": lambda real: "garbage",
    "bearer-garbage": lambda real: "Bearer garbage",
    "prefix-only": lambda real: "ck_live_",
    "random-body-bad-checksum": lambda real: "ck_live_" + _body(50),
    "truncated": lambda real: real[:-1],
    "truncated-half": lambda real: real[:30],
    "one-char-extra": lambda real: real + "A",
    "secret-char-changed": lambda real: real[:30] + ("B" if real[30] != "B" else "C") + real[31:],
    "checksum-changed": lambda real: real[:-1] + ("B" if real[-1] != "B" else "C"),
    "other-mode-prefix": lambda real: "ck_test_" + real[8:],
    "unknown-prefix": lambda real: "sk_live_" + real[8:],
    "uppercase-prefix": lambda real: real[:8].upper() + real[8:],
    "inner-space": lambda real: real[:20] + " " + real[21:],
    "non-ascii-body": lambda real: "ck_live_" + "é" * 50,
    "fullwidth-digits": lambda real: real[:-6] + "\uff11\uff12\uff13\uff14\uff15\uff16",
    "10KB": lambda real: "ck_live_" + "a" * 10_000,
    "nul-byte": lambda real: real[:20] + "\x00" + real[21:],
    "two-keys": lambda real: f"{real} {real}",
}
# Keys that pass the checksum but were never issued as they are.
WELL_FORMED_UNKNOWN = {
    "random-key": lambda real: with_checksum("ck_live_" + _body(44)),
    "real-id-other-secret": lambda real: with_checksum(real[:20] + _body(32)),
    "real-key-other-mode": lambda real: with_checksum("ck_test_" + real[8:52]),
}


class TestUnrecognisedKeys:
    @pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
    def test_malformed_is_a_decision(self, public: KeyServiceClient, real: str, make: Any) -> None:
        """A string that is not a well-formed key is 401 MALFORMED, never an RPC error."""
        decision = public.authorize(make(real))

        assert decision.allowed is False
        assert verdict(decision) == (401, "REASON_MALFORMED")
        assert decision.key_id == ""

    @pytest.mark.parametrize("make", WELL_FORMED_UNKNOWN.values(), ids=WELL_FORMED_UNKNOWN.keys())
    def test_well_formed_unknown_is_not_found(
        self, public: KeyServiceClient, real: str, make: Any
    ) -> None:
        """A well-formed key that keysvc never issued is 401 NOT_FOUND and names no key."""
        decision = public.authorize(make(real))

        assert decision.allowed is False
        assert verdict(decision) == (401, "REASON_NOT_FOUND")
        assert decision.key_id == ""
        assert decision.account_id == ""

    def test_the_real_key_still_works(self, public: KeyServiceClient, real: str) -> None:
        """The near misses tried above do not disturb the key they were made from."""
        assert verdict(public.authorize(real)) == (200, "REASON_ALLOWED")


class TestMessageSize:
    def test_an_oversized_request_is_resource_exhausted(
        self, server: ServerProcess, admin: KeyServiceClient, public: KeyServiceClient
    ) -> None:
        """Requests over the 64 KiB default are RESOURCE_EXHAUSTED, and the server stays healthy."""
        with pytest.raises(KeysvcError) as authorize:
            public.authorize("ck_live_" + "a" * 100_000)
        with pytest.raises(KeysvcError) as create:
            admin.create_key("acct_big", "n" * 100_000, "live", ["links:read"])

        assert authorize.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert create.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
        assert verdict(public.authorize("garbage")) == (401, "REASON_MALFORMED")

    def test_the_limit_is_configurable(self, server_factory: ServerFactory) -> None:
        """$KEYSVC_MAX_MESSAGE_BYTES lowers the limit: 1 KB passes, 4 KB is RESOURCE_EXHAUSTED."""
        server = server_factory.start(env={"KEYSVC_MAX_MESSAGE_BYTES": "2048"})

        with server.client(admin=False) as client:
            small = client.authorize("x" * 1_000)
            with pytest.raises(KeysvcError) as large:
                client.authorize("x" * 4_000)

        assert verdict(small) == (401, "REASON_MALFORMED")
        assert large.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
