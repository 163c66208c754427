"""Authorize over one Session stream, as a callable with the unary stub's shape.

The load generator's workers call it as they call the unary stub: `await authorize(request,
timeout=...)`. Underneath, one grpc.aio Session stream carries every worker's request: each
request gets an id and a future, one writer task writes requests in the order they were asked
(every request waiting when it writes goes in one message, as a Guard sends them), and one
reader task resolves each answer's future by its id. Pushes (keys_changed, id 0) are
counted and otherwise ignored. If the stream ends, every request waiting on it, and every later
one, fails with the stream's error.
"""

from __future__ import annotations

import asyncio
import itertools

from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

# Requests one message carries, at most, as keysvc_client's Guard sends them.
MAX_PER_MESSAGE = 512


class SessionError(Exception):
    """keysvc answered one request with a SessionError (the stream goes on)."""

    def __init__(self, error: pb.SessionError) -> None:
        super().__init__(f"SessionError {error.code}: {error.message}")
        self.code = error.code


class SessionAuthorize:
    def __init__(self, stub: pb_grpc.KeyServiceAsyncStub) -> None:
        self._call = stub.Session()
        self._pending: dict[int, asyncio.Future[pb.AuthorizeResponse]] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[pb.SessionRequest] = asyncio.Queue()
        self._failure: BaseException | None = None
        self.pushes = 0
        self._tasks = [
            asyncio.ensure_future(self._write()),
            asyncio.ensure_future(self._read()),
        ]

    async def __call__(
        self, request: pb.AuthorizeRequest, timeout: float | None = None
    ) -> pb.AuthorizeResponse:
        # `timeout` is the unary stub's; the stream has no per-request deadline. A stream that
        # fails fails every request waiting on it.
        if self._failure is not None:
            raise self._failure
        request_id = next(self._ids)
        future: asyncio.Future[pb.AuthorizeResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._outbox.put_nowait(pb.SessionRequest(id=request_id, authorize=request))
        return await future

    async def _write(self) -> None:
        try:
            outbox = self._outbox
            while True:
                batch = [await outbox.get()]
                while len(batch) < MAX_PER_MESSAGE and not outbox.empty():
                    batch.append(outbox.get_nowait())
                await self._call.write(pb.SessionRequests(requests=batch))
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self._fail(err)

    async def _read(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if not isinstance(message, pb.SessionResponses):
                    raise RuntimeError("the Session stream ended")
                for response in message.responses:
                    if response.id == 0:
                        self.pushes += 1
                        continue
                    future = self._pending.pop(response.id, None)
                    if future is None or future.done():
                        continue
                    if response.WhichOneof("response") == "authorize":
                        future.set_result(response.authorize)
                    else:
                        future.set_exception(SessionError(response.error))
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self._failure = err
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(err)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
