"""The Session stream's messages carry batches, on both sides, with no server needed: keysvc's
SessionStream (keysvc.api.session) before an authorizer that answers on cue, and the Guard's
writers (keysvc_client._session and _aio_session) over their queues."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterable
from typing import cast

import grpc
from keysvc_client import _aio_session, _session
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.api.session import MAX_IN_FLIGHT, MAX_PER_MESSAGE, SessionStream
from keysvc.core.model import Decision, Mode, Reason
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog

from .support import async_test, within_deadline

# How long the authorizer's "timeout" key waits before its own timeout gives up on it.
WAIT = 0.05


class CuedAuthorizer:
    """Authorize as keysvc's would answer a malformed key, at once; or, for the key "timeout",
    after a wait bounded by a timeout entered before it (as the change log's read_after does),
    answered NOT_FOUND when that timeout ends it."""

    async def authorize(
        self,
        api_key: str,
        required_scopes: Iterable[str] = (),
        required_mode: Mode | None = None,
        client_ip: str = "",
    ) -> Decision:
        if api_key == "timeout":
            try:
                async with asyncio.timeout(WAIT):
                    await asyncio.Event().wait()
            except TimeoutError:
                return Decision(Reason.NOT_FOUND)
        return Decision(Reason.MALFORMED)

    async def renew(self, key_id: str, digest: bytes) -> Decision:
        raise AssertionError("nothing is renewed here")


class QuietLog:
    """A change log that never learns of a change."""

    def on_changes(self, listener: Callable[[list[str]], None]) -> Callable[[], None]:
        return lambda: None


def stream() -> SessionStream:
    return SessionStream(cast(Authorizer, CuedAuthorizer()), cast(ChangeLog, QuietLog()))


def authorizing(request_id: int, api_key: str) -> pb.SessionRequest:
    return pb.SessionRequest(id=request_id, authorize=pb.AuthorizeRequest(api_key=api_key))


async def messages(*batches: list[pb.SessionRequest]) -> AsyncIterator[pb.SessionRequests]:
    """The client's side: these messages, then a half-close."""
    for batch in batches:
        yield pb.SessionRequests(requests=batch)


async def answered(
    session: SessionStream, requests: AsyncIterator[pb.SessionRequests]
) -> list[list[pb.SessionResponse]]:
    """Every message keysvc sends until the stream ends, as lists of its answers."""

    async def collect() -> list[list[pb.SessionResponse]]:
        return [list(message.responses) async for message in session.responses(requests)]

    found: list[list[pb.SessionResponse]] = await within_deadline(collect())
    return found


class TestKeysvcSide:
    @async_test
    async def test_answers_decided_at_once_go_in_one_message(self) -> None:
        sent = [authorizing(n, f"ck_live_nonsense{n}") for n in range(1, 101)]

        got = await answered(stream(), messages(sent))

        assert [len(message) for message in got] == [100]
        assert [answer.id for answer in got[0]] == list(range(1, 101))
        assert {answer.authorize.reason for answer in got[0]} == {pb.REASON_MALFORMED}

    @async_test
    async def test_a_message_carries_at_most_max_per_message_answers(self) -> None:
        """More requests in one message than a stream decides at once (MAX_IN_FLIGHT counts
        requests): every one is answered, in messages of at most MAX_PER_MESSAGE."""
        count = MAX_IN_FLIGHT + 300
        sent = [authorizing(n, "nonsense") for n in range(1, count + 1)]

        got = await answered(stream(), messages(sent))

        assert sorted(answer.id for message in got for answer in message) == list(
            range(1, count + 1)
        )
        assert max(len(message) for message in got) == MAX_PER_MESSAGE

    @async_test
    async def test_an_empty_message_is_ignored(self) -> None:
        got = await answered(stream(), messages([], [authorizing(1, "nonsense")], []))

        assert [[answer.id for answer in message] for message in got] == [[1]]

    @async_test
    async def test_a_decision_that_waits_keeps_its_own_task(self) -> None:
        """A decision that enters a timeout and then waits is ended by its own timeout, while
        the stream reads and answers the requests after it: the task that began deciding it
        goes on with it, and another reads on."""
        got = await answered(
            stream(),
            messages(
                [authorizing(1, "nonsense"), authorizing(2, "timeout"), authorizing(3, "x")],
                [authorizing(4, "nonsense")],
            ),
        )

        order = [answer.id for message in got for answer in message]
        assert order[-1] == 2 and sorted(order) == [1, 2, 3, 4]
        assert got[-1][-1].authorize.reason == pb.REASON_NOT_FOUND

    @async_test
    async def test_a_request_naming_nothing_is_an_error_for_it_alone(self) -> None:
        got = await answered(
            stream(), messages([pb.SessionRequest(id=1), authorizing(2, "nonsense")])
        )

        (first, second) = got[0]
        assert first.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert second.authorize.reason == pb.REASON_MALFORMED


def authorize_request(request_id: int, key_length: int = 8) -> pb.SessionRequest:
    return pb.SessionRequest(id=request_id, authorize=pb.AuthorizeRequest(api_key="k" * key_length))


def sizes(batches: Iterable[pb.SessionRequests]) -> list[int]:
    return [len(message.requests) for message in batches]


class TestGuardSide:
    """What the Guard's writer sends: every request queued when gRPC takes a message, up to
    MAX_PER_MESSAGE requests and MAX_MESSAGE_BYTES, in the order they were queued; the None
    that ends the stream ends it after them."""

    def test_the_blocking_guard(self) -> None:
        requests: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
        for n in range(1, 601):
            requests.put(authorize_request(n))
        writer = _session._requests(requests)

        assert sizes([next(writer), next(writer)]) == [_session.MAX_PER_MESSAGE, 88]
        for n in range(601, 641):
            requests.put(authorize_request(n, key_length=4000))
        requests.put(None)
        rest = list(writer)

        assert sum(sizes(rest)) == 40 and len(rest) > 1
        assert all(message.ByteSize() <= _session.MAX_MESSAGE_BYTES for message in rest)
        assert [r.id for message in rest for r in message.requests] == list(range(601, 641))

    @async_test
    async def test_the_asyncio_guard(self) -> None:
        requests: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        for n in range(1, 601):
            requests.put_nowait(authorize_request(n))
        writer = _aio_session._requests(requests)

        assert sizes([await anext(writer), await anext(writer)]) == [
            _session.MAX_PER_MESSAGE,
            88,
        ]
        for n in range(601, 641):
            requests.put_nowait(authorize_request(n, key_length=4000))
        requests.put_nowait(None)
        rest = [message async for message in writer]

        assert sum(sizes(rest)) == 40 and len(rest) > 1
        assert all(message.ByteSize() <= _session.MAX_MESSAGE_BYTES for message in rest)
        assert [r.id for message in rest for r in message.requests] == list(range(601, 641))

    def test_what_was_queued_before_the_end_is_sent(self) -> None:
        requests: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
        for n in (1, 2, 3):
            requests.put(authorize_request(n))
        requests.put(None)
        requests.put(authorize_request(4))

        assert [[r.id for r in m.requests] for m in _session._requests(requests)] == [[1, 2, 3]]
