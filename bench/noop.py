"""The ceiling: KeyService on grpc.aio whose Authorize answers a constant, doing nothing else.

Its Session answers each request on the stream with the same constant, reading and writing at
once as keysvc's does (one task reads, the handler writes), and batching as keysvc does: the
answers to one message's requests go in one message, with any others ready by then. The
ceiling of a stream on this stack, beside which keysvc's Session is measured.

Run as `python -m bench.noop`; it binds 127.0.0.1:0, prints `listening on HOST:PORT`
and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from bench.processes import die_with_parent

# The size and shape of what keysvc answers for an allowed key.
ANSWER = pb.AuthorizeResponse(
    allowed=True,
    http_status=200,
    reason=pb.REASON_ALLOWED,
    key_id="0123456789ab",
    account_id="acct_bench",
    mode=pb.MODE_LIVE,
    scopes=["links:read", "links:write"],
)


class NoopKeyService(pb_grpc.KeyServiceServicer):
    async def Authorize(
        self, request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuthorizeResponse:
        return ANSWER

    async def Session(
        self,
        request_iterator: AsyncIterable[pb.SessionRequests],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.SessionResponses]:
        answers: asyncio.Queue[list[pb.SessionResponse] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for message in request_iterator:
                    if message.requests:
                        answers.put_nowait(
                            [
                                pb.SessionResponse(id=request.id, authorize=ANSWER)
                                for request in message.requests
                            ]
                        )
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (batch := await answers.get()) is not None:
                # With the answers to any other message read meanwhile.
                while not answers.empty():
                    more = answers.get_nowait()
                    if more is None:
                        yield pb.SessionResponses(responses=batch)
                        return
                    batch.extend(more)
                yield pb.SessionResponses(responses=batch)
        finally:
            reader.cancel()


async def serve() -> None:
    server = grpc.aio.server()
    # The other RPCs keep the generated base's UNIMPLEMENTED (abstract only to the type stubs).
    pb_grpc.add_KeyServiceServicer_to_server(NoopKeyService(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(serve())
