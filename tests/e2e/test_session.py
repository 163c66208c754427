"""The Session stream, as a Guard's near cache uses it: Authorize and lease renewals multiplexed
on one stream, answers carrying the key's whole state and its lease, and changes pushed."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from tests.services import SharedPostgres, SharedRedis

from .harness import NewKey, ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

LEASE = 1.0
ANSWER_DEADLINE = 10.0


class SessionProbe:
    """One Session stream driven by hand: send() a request in a message of its own, together()
    several in one message; next_answer() in arrival order, and the size of each message that
    carried them in `messages`."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._requests: queue.Queue[keysvc_pb2.SessionRequests | None] = queue.Queue()
        self._answers: queue.Queue[keysvc_pb2.SessionResponse | grpc.RpcError] = queue.Queue()
        self._next_id = 0
        # How many answers (and pushes) each message from keysvc carried, in arrival order.
        self.messages: list[int] = []
        stub = keysvc_pb2_grpc.KeyServiceStub(channel)
        self._call = stub.Session(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self.messages.append(len(message.responses))
                for answer in message.responses:
                    self._answers.put(answer)
        except grpc.RpcError as err:
            self._answers.put(err)

    def together(self, *requests: keysvc_pb2.SessionRequest) -> list[int]:
        """Sends `requests` in one message, each with the next id; their ids."""
        ids = []
        for request in requests:
            self._next_id += 1
            request.id = self._next_id
            ids.append(self._next_id)
        self._requests.put(keysvc_pb2.SessionRequests(requests=requests))
        return ids

    def send(self, **request: object) -> int:
        return self.together(keysvc_pb2.SessionRequest(**request))[0]  # type: ignore[arg-type]

    def authorize(self, api_key: str, *scopes: str, client_ip: str = "") -> int:
        return self.together(authorizing(api_key, *scopes, client_ip=client_ip))[0]

    def renew(self, key_id: str) -> int:
        return self.together(renewing(key_id))[0]

    def next_answer(self, timeout: float = ANSWER_DEADLINE) -> keysvc_pb2.SessionResponse:
        answer = self._answers.get(timeout=timeout)
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    def answer_to(self, request_id: int) -> keysvc_pb2.SessionResponse:
        """The answer to one request, skipping pushes."""
        while True:
            answer = self.next_answer()
            if answer.WhichOneof("response") != "keys_changed":
                assert answer.id == request_id
                return answer

    def answers_to(self, request_ids: list[int]) -> dict[int, keysvc_pb2.SessionResponse]:
        """The answers to these requests, by id, in whatever order they come; each once."""
        wanted = set(request_ids)
        answers: dict[int, keysvc_pb2.SessionResponse] = {}
        while len(answers) < len(wanted):
            answer = self.next_answer()
            if answer.WhichOneof("response") == "keys_changed":
                continue
            assert answer.id in wanted and answer.id not in answers
            answers[answer.id] = answer
        return answers

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def authorizing(api_key: str, *scopes: str, client_ip: str = "") -> keysvc_pb2.SessionRequest:
    return keysvc_pb2.SessionRequest(
        authorize=keysvc_pb2.AuthorizeRequest(
            api_key=api_key, required_scopes=list(scopes), client_ip=client_ip
        )
    )


def renewing(key_id: str) -> keysvc_pb2.SessionRequest:
    return keysvc_pb2.SessionRequest(renew=keysvc_pb2.RenewLease(key_id=key_id))


@pytest.fixture
def session(server: ServerProcess) -> Iterator[SessionProbe]:
    with server.channel() as channel:
        probe = SessionProbe(channel)
        yield probe
        probe.close()


def lease_of(answer: keysvc_pb2.AuthorizeResponse) -> float:
    return answer.lease.ToNanoseconds() / 1e9


class TestSessionAnswersAsAuthorize:
    def test_an_allowed_key_comes_with_its_whole_state_and_a_lease(
        self, admin: KeyServiceClient, account: str, session: SessionProbe
    ) -> None:
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
        created = admin.create_key(
            account,
            "Checkout",
            "live",
            ["links:read"],
            expire_time=expires,
            allowed_ips=["203.0.113.0/24"],
        )

        answer = session.answer_to(
            session.authorize(created.secret, "links:read", client_ip="203.0.113.9")
        ).authorize

        assert (answer.allowed, answer.http_status) == (True, 200)
        assert answer.key_id == created.key.id
        assert list(answer.scopes) == ["links:read"]
        assert answer.expire_time.ToDatetime(tzinfo=UTC) == expires
        assert list(answer.allowed_ips) == ["203.0.113.0/24"]
        assert 0 < lease_of(answer) <= LEASE

    def test_unary_authorize_carries_the_lease_too(
        self, public: KeyServiceClient, new_key: NewKey
    ) -> None:
        created = new_key()

        answer = public.authorize(created.secret, ["links:read"])

        assert answer.allowed
        assert 0 < lease_of(answer) <= LEASE

    def test_refusals_of_a_key_carry_no_lease(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        admin.revoke_key(account, created.key.id)

        answer = session.answer_to(session.authorize(created.secret)).authorize

        assert answer.reason == keysvc_pb2.REASON_REVOKED
        assert not answer.HasField("lease")

    def test_many_requests_in_flight_are_each_answered_once_by_id(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        good = new_key(scopes=["links:read"])
        sent: dict[int, int] = {}
        for number in range(60):
            if number % 3 == 0:
                sent[session.authorize(good.secret, "links:read")] = 200
            elif number % 3 == 1:
                sent[session.authorize(good.secret, "sessions:write")] = 403
            else:
                sent[session.authorize("ck_live_nonsense")] = 401

        answers: dict[int, int] = {}
        while len(answers) < len(sent):
            answer = session.next_answer()
            assert answer.id not in answers
            answers[answer.id] = answer.authorize.http_status

        assert answers == sent

    def test_more_requests_than_a_stream_decides_at_once_are_all_answered(
        self, session: SessionProbe
    ) -> None:
        """Past MAX_IN_FLIGHT requests being decided, a stream stops reading until answers go
        out; it never stops answering."""
        sent = {session.authorize(f"ck_live_nonsense{number}") for number in range(2500)}

        answered = {session.next_answer().id for _ in sent}

        assert answered == sent

    def test_a_malformed_request_is_an_error_for_it_alone(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()

        bad = session.answer_to(session.authorize(created.secret, "links:teleport"))
        empty = session.answer_to(session.send())
        good = session.answer_to(session.authorize(created.secret))

        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "links:teleport" in bad.error.message
        assert empty.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert good.authorize.allowed


class TestMessagesCarryBatches:
    """A message carries any number of requests, each decided on its own as if sent alone and
    answered under its own id; a message from keysvc carries every answer ready at once."""

    def test_requests_sent_together_are_each_answered_under_their_own_id(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        proven = new_key(scopes=["links:read"])
        stranger = new_key()
        fresh = new_key(scopes=["links:read", "links:write"])
        session.answer_to(session.authorize(proven.secret, "links:read"))

        allowed, renewed, unknown, neither, teleport, lacking, nonsense = session.together(
            authorizing(fresh.secret, "links:write"),
            renewing(proven.key.id),
            renewing(stranger.key.id),
            keysvc_pb2.SessionRequest(),
            authorizing(fresh.secret, "links:teleport"),
            authorizing(fresh.secret, "customers:write"),
            authorizing("ck_live_nonsense"),
        )
        answers = session.answers_to(
            [allowed, renewed, unknown, neither, teleport, lacking, nonsense]
        )

        assert answers[allowed].authorize.allowed
        assert answers[allowed].authorize.key_id == fresh.key.id
        assert answers[renewed].authorize.allowed
        assert answers[renewed].authorize.key_id == proven.key.id
        assert 0 < lease_of(answers[renewed].authorize) <= LEASE
        assert answers[unknown].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert answers[neither].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert answers[teleport].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "links:teleport" in answers[teleport].error.message
        assert answers[lacking].authorize.http_status == 403
        assert list(answers[lacking].authorize.missing_scopes) == ["customers:write"]
        assert answers[nonsense].authorize.reason == keysvc_pb2.REASON_MALFORMED

    def test_answers_decided_at_once_come_back_in_one_message(self, session: SessionProbe) -> None:
        """Malformed keys are decided without waiting on anything: a hundred sent in one
        message are answered in one message."""
        sent = session.together(*(authorizing(f"ck_live_nonsense{n}") for n in range(100)))

        answers = session.answers_to(sent)

        assert {a.authorize.reason for a in answers.values()} == {keysvc_pb2.REASON_MALFORMED}
        assert session.messages == [100]

    def test_an_empty_message_is_ignored(self, new_key: NewKey, session: SessionProbe) -> None:
        created = new_key()

        assert session.together() == []
        answer = session.answer_to(session.authorize(created.secret))

        assert answer.authorize.allowed
        assert session.messages == [1]

    def test_a_message_of_more_requests_than_a_stream_decides_at_once_is_all_answered(
        self, session: SessionProbe
    ) -> None:
        """1,500 requests in one message: the stream decides 1,024 at a time (MAX_IN_FLIGHT
        counts requests, not messages), and answers them all, at most 512 to a message."""
        # Short malformed keys, for the message to stay within keysvc's 64 KiB.
        sent = session.together(*(authorizing(str(n)) for n in range(1500)))

        answers = session.answers_to(sent)

        assert sorted(answers) == sorted(sent)
        assert sum(session.messages) == 1500
        assert max(session.messages) <= 512


class TestRenewal:
    def test_a_key_authorized_on_the_session_is_renewed_without_the_key(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key(scopes=["links:read"])
        session.answer_to(session.authorize(created.secret, "links:read"))

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert renewed.allowed
        assert renewed.key_id == created.key.id
        assert list(renewed.scopes) == ["links:read"]
        assert 0 < lease_of(renewed) <= LEASE

    def test_a_key_the_session_never_verified_is_not_renewed(
        self, server: ServerProcess, new_key: NewKey, session: SessionProbe
    ) -> None:
        """Knowing a key id (they are not secret) renews nothing: only a key this very stream
        presented with its secret."""
        created = new_key()
        session.answer_to(session.authorize(created.secret))
        wrong = session.answer_to(session.authorize(created.secret[:-6] + "AAAAAA"))
        assert wrong.authorize.http_status == 401

        with server.channel() as channel:
            other = SessionProbe(channel)
            try:
                refused = other.answer_to(other.renew(created.key.id))
            finally:
                other.close()

        assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert not refused.HasField("authorize")

    def test_a_renewal_after_revocation_says_revoked(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        session.answer_to(session.authorize(created.secret))
        admin.revoke_key(account, created.key.id)

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert (renewed.allowed, renewed.reason) == (False, keysvc_pb2.REASON_REVOKED)
        assert not renewed.HasField("lease")

    def test_a_narrowed_key_is_renewed_narrowed(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key(scopes=["links:read", "links:write"])
        session.answer_to(session.authorize(created.secret))
        admin.update_key(account, created.key.id, scopes=["links:read"])

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert renewed.allowed
        assert list(renewed.scopes) == ["links:read"]


class TestPushedChanges:
    def test_a_revocation_is_pushed_to_the_session_that_authorized_the_key(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        bystander = new_key()
        session.answer_to(session.authorize(created.secret))

        admin.revoke_key(account, created.key.id)
        admin.revoke_key(account, bystander.key.id)

        pushed = session.next_answer()
        assert pushed.WhichOneof("response") == "keys_changed"
        assert pushed.id == 0
        # Only keys this session asked about.
        assert list(pushed.keys_changed.key_ids) == [created.key.id]


@pytest.fixture
def replicas(
    tmp_path: Path, shared_postgres: SharedPostgres, shared_redis: SharedRedis
) -> Iterator[ServerFactory]:
    """Replicas on one fresh PostgreSQL database and one Redis namespace: production's only."""
    factory = ServerFactory(
        tmp_path,
        args=[
            "--database-url", shared_postgres.fresh_database(),
            "--redis-url", shared_redis.url,
            "--redis-namespace", f"{shared_redis.prefix}{uuid.uuid4().hex[:8]}:",
        ],
    )  # fmt: skip
    yield factory
    factory.close()


def test_a_revocation_through_one_replica_is_pushed_from_another_before_revoke_returns(
    replicas: ServerFactory, account: str
) -> None:
    """Replicas tell each other of changes over Redis: a session on replica B hears of a
    revocation made through replica A long before B's next scheduled read of the change log
    (a fifth of a 20 s lease), and before A's RevokeKey has even returned."""
    a = replicas.start("--lease-seconds", "20")
    b = replicas.start("--lease-seconds", "20")
    with KeyServiceClient(a.target, admin_token=a.admin_token, timeout=60.0) as admin:
        created = admin.create_key(account, "Checkout", "live", ["links:read"])
        with b.channel() as channel:
            session = SessionProbe(channel)
            try:
                assert session.answer_to(session.authorize(created.secret)).authorize.allowed
                with ThreadPoolExecutor(1) as pool:
                    started = time.monotonic()
                    revoking = pool.submit(admin.revoke_key, account, created.key.id)
                    pushed = session.next_answer(timeout=15.0)
                    pushed_after = time.monotonic() - started
                    assert not revoking.done()
                    revoking.result(timeout=60)
            finally:
                session.close()
    assert list(pushed.keys_changed.key_ids) == [created.key.id]
    # B's own reads of the log come every 4 s.
    assert pushed_after < 2.0
