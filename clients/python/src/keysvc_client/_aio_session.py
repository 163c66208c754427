"""The asyncio Guard's Session stream: as keysvc_client._session, with a task for a reader.

A stream belongs to the event loop that opened it, like the Guard's channel: a check in
another loop leaves it behind and opens another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from keysvc_client._near_cache import Entry, NearCache, lease_clock
from keysvc_client._session import (
    MAX_RENEWALS_IN_FLIGHT,
    NOTHING_QUEUED,
    Answer,
    Backoff,
    Outcome,
    Renewal,
    gathered,
    renewed,
)
from keysvc_client.metrics import Counters
from keysvc_client.v1 import keysvc_pb2

__all__ = ["AioSession"]

log = logging.getLogger("keysvc_client.guard")

OpenCall = Callable[[AsyncIterator[keysvc_pb2.SessionRequests]], Any]


class _Stream:
    __slots__ = ("call", "closed", "generation", "pending", "requests")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.requests: asyncio.Queue[keysvc_pb2.SessionRequest | None] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[Answer] | Renewal] = {}
        self.closed = False
        self.call: Any = None


async def _requests(
    requests: asyncio.Queue[keysvc_pb2.SessionRequest | None],
) -> AsyncIterator[keysvc_pb2.SessionRequests]:
    # As keysvc_client._session's: a message carries every request queued by the time gRPC
    # takes it.
    def ready() -> keysvc_pb2.SessionRequest | object | None:
        return NOTHING_QUEUED if requests.empty() else requests.get_nowait()

    over: keysvc_pb2.SessionRequest | None = None
    while (first := await requests.get() if over is None else over) is not None:
        message, over, end = gathered(first, ready)
        yield message
        if end:
            return


class AioSession:
    """One Session stream at a time for one asyncio Guard, and the task that reads it."""

    def __init__(self, open_call: OpenCall, cache: NearCache, counters: Counters) -> None:
        self._open_call = open_call
        self._cache = cache
        self._counters = counters
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: _Stream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._backoff = Backoff()
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)

    @property
    def up(self) -> int:
        return 0 if self._stream is None else 1

    async def authorize(
        self, request: keysvc_pb2.AuthorizeRequest, timeout: float
    ) -> tuple[Answer, int]:
        """As Session.authorize."""
        stream = self._start()
        if stream is None:
            return Outcome.DOWN, 0
        ident = next(self._ids)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        stream.pending[ident] = answer
        stream.requests.put_nowait(keysvc_pb2.SessionRequest(id=ident, authorize=request))
        try:
            return await asyncio.wait_for(answer, timeout), stream.generation
        except TimeoutError:
            stream.pending.pop(ident, None)
            return Outcome.TIMED_OUT, 0

    def renew(self, entry: Entry) -> bool:
        """As Session.renew; only from the loop the stream belongs to."""
        stream = self._stream
        if (
            stream is None
            or stream.closed
            or stream.generation != entry.session
            or len(stream.pending) >= MAX_RENEWALS_IN_FLIGHT
            or self._loop is not asyncio.get_running_loop()
        ):
            return False
        ident = next(self._ids)
        stream.pending[ident] = Renewal(entry, lease_clock())
        stream.requests.put_nowait(
            keysvc_pb2.SessionRequest(
                id=ident, renew=keysvc_pb2.RenewLease(key_id=entry.key.key_id)
            )
        )
        self._counters.renewals.add()
        return True

    def open(self) -> bool:
        return self._start() is not None

    async def close(self) -> None:
        """Ends the stream and the reader; a later miss opens them again."""
        reader, loop = self._reader, self._loop
        if reader is not None and loop is asyncio.get_running_loop():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self.abandon()

    def abandon(self) -> None:
        """Leaves the stream and reader behind, ended if their loop still runs."""
        reader, stream, loop = self._reader, self._stream, self._loop
        self._reader = self._stream = self._loop = None
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            if reader is not None:
                loop.call_soon_threadsafe(reader.cancel)
            if stream is not None:
                loop.call_soon_threadsafe(stream.call.cancel)

    # -- the stream and its reader ------------------------------------------------------

    def _start(self) -> _Stream | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.abandon()
            self._loop = loop
        if self._stream is not None:
            return self._stream
        if self._reader is not None:  # between two streams: it reconnects after its backoff
            return None
        stream = self._open()
        if stream is not None:
            self._reader = loop.create_task(self._run(stream), name="keysvc-guard-session")
        return stream

    def _open(self) -> _Stream | None:
        stream = _Stream(next(self._generations))
        try:
            stream.call = self._open_call(_requests(stream.requests))
        except Exception as err:
            log.debug("could not open keysvc's Session stream: %r", err)
            return None
        self._stream = stream
        self._counters.connects.add()
        return stream

    async def _run(self, stream: _Stream | None) -> None:
        me = asyncio.current_task()
        try:
            while True:
                answered, code = False, None
                if stream is not None:
                    answered, code = await self._read(stream)
                    self._end(stream, answered, code)
                    # grpc.aio answers a cancellation that lands in its read with a CANCELLED
                    # status instead of CancelledError: close() must still end this task.
                    if me is not None and me.cancelling():
                        raise asyncio.CancelledError
                await asyncio.sleep(self._backoff.after(answered=answered, code=code))
                if self._reader is not me:
                    return
                stream = self._open()
        finally:
            if stream is not None and not stream.closed:
                stream.call.cancel()
                self._end(stream, False, grpc.StatusCode.CANCELLED, quiet=True)
            if self._reader is me:
                self._reader = None

    async def _read(self, stream: _Stream) -> tuple[bool, grpc.StatusCode | None]:
        answered = False
        try:
            async for message in stream.call:
                answered = True
                for response in message.responses:
                    self._dispatch(stream, response)
        except grpc.aio.AioRpcError as err:
            return answered, err.code()
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception:
            log.exception("keysvc's Session stream failed")
            return answered, grpc.StatusCode.UNKNOWN
        return answered, None

    def _dispatch(self, stream: _Stream, response: keysvc_pb2.SessionResponse) -> None:
        if response.WhichOneof("response") == "keys_changed":
            self._counters.pushes.add()
            self._cache.drop(response.keys_changed.key_ids)
            return
        pending = stream.pending.pop(response.id, None)
        if isinstance(pending, Renewal):
            renewed(self._cache, pending.entry, pending.sent, response)
        elif pending is not None and not pending.done():
            pending.set_result(response)

    def _end(
        self,
        stream: _Stream,
        answered: bool,
        code: grpc.StatusCode | None,
        *,
        quiet: bool = False,
    ) -> None:
        stream.closed = True
        if self._stream is stream:
            self._stream = None
        pending, stream.pending = stream.pending, {}
        stream.requests.put_nowait(None)
        for waiter in pending.values():
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(Outcome.BROKEN)
        if quiet:
            return
        if code is grpc.StatusCode.UNIMPLEMENTED:
            log.info("keysvc has no Session RPC: this Guard asks over the unary Authorize")
        elif answered:
            log.warning(
                "keysvc's Session stream ended (%s); checks go over the unary Authorize until"
                " it is back",
                "OK" if code is None else code.name,
            )
        else:
            log.debug("keysvc's Session stream could not be opened (%s)", code)
