"""An API server's Guard in the explorer: keysvc_client's own near cache, on a clock of its own,
over a Session stream to the real keysvc.api.session.SessionStream of one replica.

The near cache is the client's (keysvc_client._near_cache.NearCache): pure logic, told the time
by its caller, so that it runs here on the Guard's virtual clock. What the client does around it
with gRPC and threads (keysvc_client.aio.Guard.check, _ask, _unary; _aio_session's dispatch and
renewals; _session.renewed) is mirrored by `Guard` below, step for step, on the explorer's loop.
The rule it follows (docs/revocation.md): an entry decides a later request of its key only while
the Guard's clock reads before the time the Guard *sent* the request the entry came from (or the
renewal that refreshed it) plus the lease the answer carried; a hit on an entry with less than
half its lease left sends a renewal over the stream that authorized the key; pushed changes drop
entries, for speed only.

The stream is one ordered channel each way, of messages that carry batches: the requests queued
when the Guard's side writes go in one message (batched by keysvc_client._aio_session's own
code), the answers and pushes ready when keysvc's side writes in another. Every message arrives
after a random delay, never before one sent earlier (a push is reordered relative to nothing
else on its stream); a push may be lost from its message, or stall the stream behind it. A cut
ends the stream: answers in flight are lost, the Guard asks over the unary Authorize until it
is back, and its entries decide until their deadlines. A paused Guard (SIGSTOP, a suspend)
does nothing until it resumes, while requests keep arriving; its clock counts on.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from keysvc_client import _guard_common
from keysvc_client._aio_session import _requests as batched
from keysvc_client._guard_common import Verdict
from keysvc_client._near_cache import Entry, NearCache, key_digest
from keysvc_client._session import Outcome
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.api import convert
from keysvc.api.session import SessionStream
from keysvc.api.status import status_code
from keysvc.core.errors import KeysvcError
from keysvc.runtime.build import Keysvc

# One way through the network, for a message on the stream or a unary call; now and then a
# stall (a lost packet sent again, a full window) holds it, and on a stream all behind it.
LATENCIES = (0.0, 0.0005, 0.002, 0.01, 0.05)
STALLS = (0.3, 1.0)
STALLED = 0.05
# How long a push may hold up the stream behind it (a slow reader, a full window).
PUSH_STALLS = (0.0, 0.0, 0.0, 0.2, 1.0)
PUSH_LOST = 0.2
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class GuardClock:
    """The API server's clock for leases: its own origin, and its own rate, within rho of real
    time. Like CLOCK_BOOTTIME, it counts on while the process is stopped or the machine
    suspended; it keeps the stopped stretches only for a mutation to take them out."""

    def __init__(self, real: Callable[[], float], rate: float, origin: float) -> None:
        self._real = real
        self.rate = rate
        self.origin = origin
        self.stopped_for = 0.0
        self.stopped_since: float | None = None

    def now(self) -> float:
        return self.origin + self.rate * self._real()

    def real_seconds(self, seconds: float) -> float:
        """How long, in real time, this clock takes to count `seconds`."""
        return seconds / self.rate

    def stop(self) -> None:
        self.stopped_since = self._real()

    def go(self) -> None:
        if self.stopped_since is not None:
            self.stopped_for += self._real() - self.stopped_since
            self.stopped_since = None


@dataclass(frozen=True)
class Checked:
    """A Guard's verdict on one request, and whether its near cache gave it."""

    verdict: Verdict
    local: bool

    @property
    def outcome(self) -> str:
        """In the History's words: "allowed", "Reason.<NAME>", or "error: <why>"."""
        if self.verdict.allowed:
            return "allowed"
        reason = self.verdict.reason
        if reason in {"unavailable", "misconfigured", "refused"}:
            return f"error: {reason}"
        return f"Reason.{reason.upper()}"


@dataclass(frozen=True)
class Renewal:
    """A renewal in flight: the entry it is for, and when it was sent (the Guard's clock)."""

    entry: Entry
    sent: float


class Stream:
    """One Session stream: the replica's real SessionStream, and the network both ways."""

    def __init__(
        self,
        generation: int,
        replica: Keysvc,
        rng: random.Random,
        receive: Callable[[Stream, list[pb.SessionResponse]], Awaitable[None]],
        counts: Counter[str],
    ) -> None:
        self.generation = generation
        self.pending: dict[int, asyncio.Future[pb.SessionResponse | Outcome] | Renewal] = {}
        self.closed = False
        self._rng = rng
        self._receive = receive
        self._counts = counts
        self._outbox: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        self._up: asyncio.Queue[tuple[float, pb.SessionRequests]] = asyncio.Queue()
        self._inbox: asyncio.Queue[pb.SessionRequests | None] = asyncio.Queue()
        self._down: asyncio.Queue[tuple[float, pb.SessionResponses]] = asyncio.Queue()
        server = SessionStream(replica.authorizer, replica.change_log)
        self._tasks = [
            asyncio.ensure_future(self._write()),
            asyncio.ensure_future(self._carry_up()),
            asyncio.ensure_future(self._serve(server)),
            asyncio.ensure_future(self._carry_down()),
        ]

    def send(self, request: pb.SessionRequest) -> None:
        self._outbox.put_nowait(request)

    def cut(self) -> None:
        """The stream ends: whatever is in flight either way is lost."""
        self.closed = True
        for task in self._tasks:
            task.cancel()

    async def _write(self) -> None:
        """The Guard's side: each message carries the requests queued when it is sent."""
        loop = asyncio.get_running_loop()
        async for message in batched(self._outbox):
            self._up.put_nowait((loop.time(), message))

    async def _carry_up(self) -> None:
        while True:
            sent, message = await self._up.get()
            await _until(sent + latency(self._rng))
            self._inbox.put_nowait(message)

    async def _requests(self) -> AsyncIterator[pb.SessionRequests]:
        while (message := await self._inbox.get()) is not None:
            yield message

    async def _serve(self, server: SessionStream) -> None:
        loop = asyncio.get_running_loop()
        async for message in server.responses(self._requests()):
            self._down.put_nowait((loop.time(), message))

    async def _carry_down(self) -> None:
        while True:
            sent, message = await self._down.get()
            arrives = sent + latency(self._rng)
            # A push may be lost from its message; one that is not may stall the message.
            delivered = []
            for response in message.responses:
                if response.WhichOneof("response") == "keys_changed":
                    if self._rng.random() < PUSH_LOST:
                        self._counts["pushes lost"] += 1
                        continue
                    arrives += self._rng.choice(PUSH_STALLS)
                delivered.append(response)
            if not delivered:
                continue
            await _until(arrives)
            # In order: the next message waits until this one is read (a paused Guard reads
            # nothing).
            await self._receive(self, delivered)


def latency(rng: random.Random) -> float:
    return rng.choice(STALLS) if rng.random() < STALLED else rng.choice(LATENCIES)


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - asyncio.get_running_loop().time()))


class Guard:
    """One API server's Guard, attached to one replica. See the module's docstring."""

    def __init__(
        self,
        number: int,
        replica_number: int,
        replica: Keysvc,
        clock: GuardClock,
        rng: random.Random,
        *,
        timeout: float,
        counts: Counter[str],
    ) -> None:
        self.number = number
        self.replica_number = replica_number
        self.clock = clock
        self.cache = NearCache()
        self.settings = _guard_common.settings(
            timeout=timeout,
            required_mode=None,
            unavailable_status=503,
            realm="api",
            max_attempts=3,
        )
        self.counts = counts
        self._replica = replica
        self._rng = rng
        self._running = asyncio.Event()
        self._running.set()
        self._pauses = 0
        self._cuts = 0
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        self._stream: Stream | None = self._open()

    def now(self) -> float:
        return self.clock.now()

    # -- what the explorer does to it ---------------------------------------------------

    def pause(self) -> None:
        if self._pauses == 0:
            self._running.clear()
            self.clock.stop()
        self._pauses += 1

    def resume(self) -> None:
        self._pauses -= 1
        if self._pauses == 0:
            self.clock.go()
            self._running.set()

    def cut(self) -> None:
        """Its Session stream breaks, and stays down until `reconnect`."""
        self._cuts += 1
        stream, self._stream = self._stream, None
        if stream is not None:
            self._end(stream)

    def reconnect(self) -> None:
        self._cuts -= 1
        if self._cuts == 0 and self._stream is None:
            self._stream = self._open()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._end(stream)

    # -- keysvc_client.aio.Guard ----------------------------------------------------------

    async def check(self, api_key: str, scope: str) -> Checked:
        """As Guard.check, for a request that arrived now (it waits while the Guard is paused)."""
        await self._running.wait()
        required = _guard_common.required_scopes([scope])
        digest = key_digest(api_key)
        now = self.now()
        held = self.cache.get(digest, now)
        if held is not None:
            found = held.decide(required, "", self.settings, self.cache.known_scopes)
            if found is not None:
                self.counts["near cache hits"] += 1
                if now >= held.renew_at and isinstance(held, Entry):
                    self._renew(held)
                return Checked(found, local=True)
        return Checked(await self._ask(api_key, digest, required), local=False)

    async def _ask(self, api_key: str, digest: bytes, required: tuple[str, ...]) -> Verdict:
        settings = self.settings
        sent, epoch = self.now(), self.cache.epoch
        deadline = sent + settings.timeout
        answer, generation = await self._authorize(_request(api_key, required), settings.timeout)
        await self._running.wait()
        if answer is Outcome.TIMED_OUT:
            return _guard_common.from_failure(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no answer", api_key, required, settings
            )
        if isinstance(answer, Outcome):
            self.counts["unary fallbacks"] += 1
            remaining = deadline - self.now()
            if remaining <= 0:
                return _guard_common.from_failure(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "no time left", api_key, required, settings
                )
            return await self._unary(api_key, required, digest, remaining)
        return _guard_common.from_session_answer(
            answer,
            lambda response: self._decided(response, digest, required, sent, epoch, generation),
            api_key,
            required,
            settings,
        )

    async def _unary(
        self, api_key: str, required: tuple[str, ...], digest: bytes, timeout: float
    ) -> Verdict:
        """The unary Authorize (keysvc.api.servicer's), over the network."""
        epoch, sent = self.cache.epoch, self.now()
        try:
            async with asyncio.timeout(self.clock.real_seconds(timeout)):
                await asyncio.sleep(latency(self._rng))
                decision = await self._replica.authorizer.authorize(api_key, required, None, "")
                response = convert.decision_to_pb(decision)
                await asyncio.sleep(latency(self._rng))
        except TimeoutError:
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
        except KeysvcError as err:
            code, details = status_code(err), str(err)
        else:
            await self._running.wait()
            return self._decided(response, digest, required, sent, epoch, 0)
        await self._running.wait()
        return _guard_common.from_failure(code, details, api_key, required, self.settings)

    def _decided(
        self,
        response: pb.AuthorizeResponse,
        digest: bytes,
        required: tuple[str, ...],
        sent: float,
        epoch: int,
        session: int,
    ) -> Verdict:
        return self.cache.answered(
            digest,
            response,
            required,
            sent=sent,
            epoch=epoch,
            session=session,
            settings=self.settings,
            client_ip="",
        )

    def _renew(self, entry: Entry) -> None:
        entry.renew_at = math.inf
        stream = self._stream
        if stream is None or stream.closed or stream.generation != entry.session:
            return
        ident = next(self._ids)
        stream.pending[ident] = Renewal(entry, self.now())
        stream.send(pb.SessionRequest(id=ident, renew=pb.RenewLease(key_id=entry.key.key_id)))
        self.counts["renewals sent"] += 1

    # -- keysvc_client._aio_session.AioSession --------------------------------------------

    def _open(self) -> Stream:
        return Stream(
            next(self._generations), self._replica, self._rng, self._dispatch, self.counts
        )

    async def _authorize(
        self, request: pb.AuthorizeRequest, timeout: float
    ) -> tuple[pb.SessionResponse | Outcome, int]:
        stream = self._stream
        if stream is None:
            return Outcome.DOWN, 0
        ident = next(self._ids)
        answer: asyncio.Future[pb.SessionResponse | Outcome] = (
            asyncio.get_running_loop().create_future()
        )
        stream.pending[ident] = answer
        stream.send(pb.SessionRequest(id=ident, authorize=request))
        try:
            async with asyncio.timeout(self.clock.real_seconds(timeout)):
                return await answer, stream.generation
        except TimeoutError:
            stream.pending.pop(ident, None)
            return Outcome.TIMED_OUT, 0

    async def _dispatch(self, stream: Stream, responses: list[pb.SessionResponse]) -> None:
        await self._running.wait()
        if stream.closed:
            return
        for response in responses:
            if response.WhichOneof("response") == "keys_changed":
                self.counts["pushes read"] += 1
                self.cache.drop(response.keys_changed.key_ids)
                continue
            pending = stream.pending.pop(response.id, None)
            if isinstance(pending, Renewal):
                self._renewed(pending, response)
            elif pending is not None and not pending.done():
                pending.set_result(response)

    def _renewed(self, renewal: Renewal, response: pb.SessionResponse) -> None:
        """As keysvc_client._session.renewed, on this Guard's clock."""
        self.counts["renewals answered"] += 1
        entry = renewal.entry
        kind = response.WhichOneof("response")
        if kind == "authorize":
            self.cache.renewed(entry, response.authorize, sent=renewal.sent)
        elif kind == "error" and response.error.code == UNAVAILABLE:
            now = self.now()
            entry.renew_at = now + (entry.deadline - now) / 2

    def _end(self, stream: Stream) -> None:
        stream.cut()
        pending, stream.pending = stream.pending, {}
        for waiter in pending.values():
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(Outcome.BROKEN)


def _request(api_key: str, required: tuple[str, ...]) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(api_key=api_key, required_scopes=list(required))
