"""One Session stream: an API server's Guard asks Authorize and renews leases over it, and is
told of changes to the keys it asked about.

Requests are answered as they are decided, in any order, each with its request's id. A renewal
names only a key id: it is answered for a key this stream's Authorize saw with a verified secret
(the stream remembers the key id and the key's SHA-256, never the key), as if Authorize had been
called again with no required scope. Every answer carries the lease of keysvc.usecases.
change_log (docs/revocation.md): the Guard may decide on it until then, and no longer.
Pushed changes only make a Guard drop entries sooner; strictness rests on the lease alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator

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
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending = False

    async def responses(
        self, requests: AsyncIterable[pb.SessionRequest]
    ) -> AsyncIterator[pb.SessionResponse]:
        """Answers `requests` until the client ends its side and every answer is sent."""
        unregister = self._log.on_changes(self._changed)
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (response := await self._out.get()) is not None:
                yield response
                if response.WhichOneof("response") != "keys_changed":
                    self._in_flight.release()
            if not self._ending:
                await reader
        finally:
            unregister()
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()

    def end(self) -> None:
        """Ends the stream now (the server is shutting down): answers not yet sent are dropped,
        and the client asks again elsewhere, or over unary, within its own deadline."""
        self._ending = True
        self._out.put_nowait(None)

    async def _read(self, requests: AsyncIterable[pb.SessionRequest]) -> None:
        try:
            async for request in requests:
                await self._in_flight.acquire()
                task = asyncio.ensure_future(self._answer(request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            # Half-closed by the client: answer what is in flight, then end the stream.
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        finally:
            self._out.put_nowait(None)

    async def _answer(self, request: pb.SessionRequest) -> None:
        started = time.perf_counter()
        kind = request.WhichOneof("request")
        try:
            decision = await self._decide(kind, request)
        except KeysvcError as err:
            self._out.put_nowait(self._error(request.id, status_code(err), str(err)))
            if isinstance(err, Unavailable):
                self._metrics.decision(
                    "unavailable", time.perf_counter() - started, transport="session"
                )
            return
        except Exception:
            log.exception("Session %s failed", kind)
            self._out.put_nowait(
                self._error(request.id, grpc.StatusCode.INTERNAL, "internal error")
            )
            return
        self._out.put_nowait(
            pb.SessionResponse(id=request.id, authorize=convert.decision_to_pb(decision))
        )
        self._metrics.decision(
            decision.reason.name, time.perf_counter() - started, transport="session"
        )

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
