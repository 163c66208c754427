"""AuthorizeResponse as keysvc packs it from a decision (keysvc.api.convert)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.api import convert
from keysvc.core.model import Decision, KeyGrant, Mode, Reason

DIGEST = bytes(32)


def grant(**fields: object) -> KeyGrant:
    base: dict[str, object] = {
        "key_id": "AbCdEf123456",
        "account_id": "acct_1",
        "mode": Mode.LIVE,
        "scopes": frozenset({"links:read", "links:write"}),
        "revoked": False,
        "seq": 7,
        "digest": DIGEST,
    }
    return KeyGrant(**{**base, **fields})  # type: ignore[arg-type]


def test_an_allowed_answer_carries_the_whole_grant_and_the_lease() -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    answer = convert.decision_to_pb(
        Decision(
            Reason.ALLOWED,
            grant(expire_time=expires, allowed_ips=(ipaddress.ip_network("10.0.0.0/8"),)),
            lease_seconds=0.75,
        )
    )
    assert answer.allowed and answer.http_status == 200
    assert answer.reason == pb.REASON_ALLOWED
    assert (answer.key_id, answer.account_id, answer.mode) == ("AbCdEf123456", "acct_1", 1)
    assert list(answer.scopes) == ["links:read", "links:write"]
    assert answer.expire_time.ToDatetime(tzinfo=UTC) == expires
    assert list(answer.allowed_ips) == ["10.0.0.0/8"]
    assert answer.lease.ToNanoseconds() == 750_000_000


def test_each_answer_carries_the_grant_it_was_decided_on_not_an_earlier_one_of_the_key() -> None:
    # A narrowed key gets a new grant: the answer after it must show the narrower scopes,
    # however often the wider grant was answered before.
    wide, narrow = grant(), grant(scopes=frozenset({"links:read"}), seq=8)
    for _ in range(3):
        assert list(convert.decision_to_pb(Decision(Reason.ALLOWED, wide)).scopes) == [
            "links:read",
            "links:write",
        ]
    refused = convert.decision_to_pb(
        Decision(Reason.INSUFFICIENT_SCOPE, narrow, ("links:write",), lease_seconds=0.5)
    )
    assert not refused.allowed and refused.http_status == 403
    assert list(refused.scopes) == ["links:read"]
    assert list(refused.missing_scopes) == ["links:write"]
    # And the wider grant's answer is unchanged by the narrower one's.
    assert list(convert.decision_to_pb(Decision(Reason.ALLOWED, wide)).scopes) == [
        "links:read",
        "links:write",
    ]


def test_a_revoked_key_gets_no_lease_and_a_refusal_without_a_grant_carries_nothing_of_one() -> None:
    revoked = convert.decision_to_pb(Decision(Reason.REVOKED, grant(revoked=True)))
    assert not revoked.allowed and revoked.http_status == 401
    assert not revoked.HasField("lease")
    unknown = convert.decision_to_pb(Decision(Reason.NOT_FOUND))
    assert (unknown.key_id, list(unknown.scopes), unknown.mode) == ("", [], 0)
