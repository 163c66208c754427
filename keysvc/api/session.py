"""One Session stream: an API server's Guard asks Authorize and renews leases over it, and is
told of changes to the keys it asked about.

Each message of the stream carries a batch: the client's requests ready at once, keysvc's
answers (and pushes) ready at once. Every request is decided on its own, as if sent alone, and
answered as it is decided, in any order, with its request's id. A renewal names only a key id:
it is answered for a key this stream's Authorize saw with a verified secret (the stream
remembers the key id and the key's SHA-256, never the key), as if Authorize had been called
again with no required scope. Every answer carries the lease of keysvc.usecases.change_log
(docs/revocation.md): the Guard may decide on it until then, and no longer. Pushed changes
only make a Guard drop entries sooner; strictness rests on the lease alone.

The task that reads the stream decides each request itself, as long as deciding needs no
waiting (a key held in memory): no task per request. A decision that has to wait (a read of
Redis or the database, argon2) keeps that task, and a new one reads on; so each decision runs
in one task from start to end, as it would in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Generator, Iterator
from typing import Any

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.api import convert
from keysvc.api.status import status_code
from keysvc.core.errors import FailedPrecondition, InvalidArgument, KeysvcError, Unavailable
from keysvc.core.model import Decision, Reason
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog

log = logging.getLogger(__name__)

# Decisions after which the key can never be allowed again: nothing left to renew.
_FINAL = frozenset({Reason.REVOKED, Reason.EXPIRED})
# Requests of one stream being decided or waiting to be sent: past this, the stream stops
# reading requests (HTTP/2 flow control then holds the client) until answers go out.
MAX_IN_FLIGHT = 1024
# Answers and pushes one message carries, at most; the rest go in the next. The largest answer
# (a key with 100 allowed IPv6 ranges) is under 5 KB: 512 of them stay well under the 4 MiB a
# gRPC client accepts in one message by default.
MAX_PER_MESSAGE = 512


class SessionStream:
    def __init__(
        self,
        authorizer: Authorizer,
        change_log: ChangeLog,
        *,
        metrics: Metrics = NO_METRICS,
        max_keys: int = 100_000,
    ) -> None:
        self._authorizer = authorizer
        self._log = change_log
        self._metrics = metrics
        self._max_keys = max_keys
        # Key id → SHA-256 of the key, for keys this stream saw verified; least recent first.
        self._proven: OrderedDict[str, bytes] = OrderedDict()
        self._out: asyncio.Queue[pb.SessionResponse | None] = asyncio.Queue()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        # The task reading requests, and those finishing a decision that had to wait.
        self._tasks: set[asyncio.Task[None]] = set()
        # Requests being decided, not yet answered.
        self._deciding = 0
        # The client half-closed its side: the stream ends once those are answered.
        self._read_all = False
        # Reading the requests failed: the stream ends with this error.
        self._failure: BaseException | None = None
        self._ending = False

    async def responses(
        self, requests: AsyncIterable[pb.SessionRequests]
    ) -> AsyncIterator[pb.SessionResponses]:
        """Answers `requests` until the client ends its side and every answer is sent."""
        unregister = self._log.on_changes(self._changed)
        self._read_on(aiter(requests), iter(()))
        out = self._out
        try:
            while (first := await out.get()) is not None:
                # Every answer ready now goes in this message.
                batch = [first]
                last = False
                while len(batch) < MAX_PER_MESSAGE and not out.empty():
                    response = out.get_nowait()
                    if response is None:
                        last = True
                        break
                    batch.append(response)
                yield pb.SessionResponses(responses=batch)
                for response in batch:
                    if response.WhichOneof("response") != "keys_changed":
                        self._in_flight.release()
                if last:
                    break
            if self._failure is not None and not self._ending:
                raise self._failure
        finally:
            unregister()
            for task in list(self._tasks):
                task.cancel()

    def end(self) -> None:
        """Ends the stream now (the server is shutting down): answers not yet sent are dropped,
        and the client asks again elsewhere, or over unary, within its own deadline."""
        self._ending = True
        self._out.put_nowait(None)

    def _read_on(
        self, messages: AsyncIterator[pb.SessionRequests], batch: Iterator[pb.SessionRequest]
    ) -> None:
        """A task to read the rest of `batch`, then the messages after it."""
        task = asyncio.ensure_future(self._read(messages, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(
        self, messages: AsyncIterator[pb.SessionRequests], batch: Iterator[pb.SessionRequest]
    ) -> None:
        try:
            while True:
                for request in batch:
                    await self._in_flight.acquire()
                    self._deciding += 1
                    if await _inline(self._answer(request), self._read_on, messages, batch):
                        # The decision waited: another task read on meanwhile.
                        return
                message = await messages.__anext__()
                batch = iter(message.requests)
        except StopAsyncIteration:
            # Half-closed by the client: answer what is in flight, then end the stream.
            self._read_all = True
            if self._deciding == 0:
                self._out.put_nowait(None)
        except Exception as err:
            self._failure = err
            self._out.put_nowait(None)

    async def _answer(self, request: pb.SessionRequest) -> None:
        started = time.perf_counter()
        kind = request.WhichOneof("request")
        try:
            decision = await self._decide(kind, request)
        except KeysvcError as err:
            self._answered(self._error(request.id, status_code(err), str(err)))
            if isinstance(err, Unavailable):
                self._metrics.decision(
                    "unavailable", time.perf_counter() - started, transport="session"
                )
            return
        except Exception:
            log.exception("Session %s failed", kind)
            self._answered(self._error(request.id, grpc.StatusCode.INTERNAL, "internal error"))
            return
        self._answered(
            pb.SessionResponse(id=request.id, authorize=convert.decision_to_pb(decision))
        )
        self._metrics.decision(
            decision.reason.name, time.perf_counter() - started, transport="session"
        )

    def _answered(self, response: pb.SessionResponse) -> None:
        self._out.put_nowait(response)
        self._deciding -= 1
        if self._read_all and self._deciding == 0:
            self._out.put_nowait(None)

    async def _decide(self, kind: str | None, request: pb.SessionRequest) -> Decision:
        if kind == "authorize":
            asked = request.authorize
            decision = await self._authorizer.authorize(
                asked.api_key,
                asked.required_scopes,
                convert.mode_from_pb(asked.required_mode, "required_mode", required=False),
                asked.client_ip,
            )
            self._remember(decision)
            return decision
        if kind == "renew":
            key_id = request.renew.key_id
            digest = self._proven.get(key_id)
            if digest is None:
                raise FailedPrecondition(
                    f"key {key_id!r} was not authorized on this session: send the key"
                )
            decision = await self._authorizer.renew(key_id, digest)
            if decision.grant is None or decision.reason in _FINAL:
                self._proven.pop(key_id, None)
            return decision
        raise InvalidArgument("SessionRequest: set authorize or renew")

    def _remember(self, decision: Decision) -> None:
        grant = decision.grant
        if grant is None or grant.digest is None or decision.reason in _FINAL:
            return
        self._proven[grant.key_id] = grant.digest
        self._proven.move_to_end(grant.key_id)
        while len(self._proven) > self._max_keys:
            self._proven.popitem(last=False)

    def _changed(self, key_ids: list[str]) -> None:
        mine = [key_id for key_id in key_ids if key_id in self._proven]
        if mine:
            self._out.put_nowait(pb.SessionResponse(keys_changed=pb.KeysChanged(key_ids=mine)))
            self._metrics.push_sent("sessions", len(mine))

    @staticmethod
    def _error(request_id: int, code: grpc.StatusCode, message: str) -> pb.SessionResponse:
        return pb.SessionResponse(
            id=request_id, error=pb.SessionError(code=code.value[0], message=message)
        )


@types.coroutine
def _inline(
    coroutine: Coroutine[Any, Any, None], on_wait: Callable[..., None], *args: Any
) -> Generator[Any, Any, bool]:
    """Runs `coroutine` in the task awaiting this, as `await coroutine` would, and calls
    `on_wait(*args)` just before it first suspends. Whether it suspended."""
    try:
        step = coroutine.send(None)
    except StopIteration:
        return False
    on_wait(*args)
    # The rest is `yield from`, the first step taken (PEP 380).
    while True:
        try:
            sent = yield step
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as err:
            try:
                step = coroutine.throw(err)
            except StopIteration:
                return True
        else:
            try:
                step = coroutine.send(sent)
            except StopIteration:
                return True
