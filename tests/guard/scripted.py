"""A stand-in keysvc whose Session fails on cue, for the faults a real keysvc will not make on
demand: a stream that breaks with a request in flight, an answer that never comes or comes
late, a SessionError. Its unary Authorize answers as keysvc would; it counts every call.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from keysvc_client import keysvc_pb2 as pb
from keysvc_client import keysvc_pb2_grpc
from keysvc_client._near_cache import lease_clock

HEADER = "Bearer ck_live_" + "A" * 50


def allowed(lease: float = 5.0) -> pb.AuthorizeResponse:
    response = pb.AuthorizeResponse(
        allowed=True,
        http_status=200,
        reason=pb.REASON_ALLOWED,
        key_id="KEY000000001",
        account_id="acct_fake",
        mode=pb.MODE_LIVE,
        scopes=["links:read"],
    )
    if lease:
        response.lease.FromNanoseconds(int(lease * 1e9))
    return response


class ScriptedKeysvc(keysvc_pb2_grpc.KeyServiceServicer):
    """`session` says what Session does with each message's requests:

    - "answer": answers each with `answer`, `delay` seconds after its message came;
    - "break": ends the stream with UNAVAILABLE, the requests unanswered;
    - "error": answers each with SessionError `error_code`;
    - "silent": never answers;
    - "unimplemented": there is no Session (an older keysvc).
    """

    def __init__(self) -> None:
        self.session = "answer"
        self.delay = 0.0
        self.error_code = grpc.StatusCode.UNAVAILABLE
        self.answer = allowed()
        self.calls: Counter[str] = Counter()
        # lease_clock() when each Session request arrived. `calls["Session"]` counts requests,
        # not messages.
        self.received: list[float] = []
        self._lock = threading.Lock()

    def Authorize(self, request: Any, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        with self._lock:
            self.calls["Authorize"] += 1
        return self.answer

    def Session(
        self, messages: Iterator[pb.SessionRequests], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionResponses]:
        if self.session == "unimplemented":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        for message in messages:
            with self._lock:
                self.calls["Session"] += len(message.requests)
                self.received.extend(lease_clock() for _ in message.requests)
            if self.session == "break":
                context.abort(grpc.StatusCode.UNAVAILABLE, "stream reset")
            if self.session == "silent" or not message.requests:
                continue
            if self.session == "error":
                error = pb.SessionError(code=self.error_code.value[0], message="cannot decide")
                yield pb.SessionResponses(
                    responses=[
                        pb.SessionResponse(id=request.id, error=error)
                        for request in message.requests
                    ]
                )
                continue
            time.sleep(self.delay)
            yield pb.SessionResponses(
                responses=[
                    pb.SessionResponse(id=request.id, authorize=self.answer)
                    for request in message.requests
                ]
            )


class Scripted:
    """A ScriptedKeysvc served on a loopback port."""

    def __init__(self) -> None:
        self.keysvc = ScriptedKeysvc()  # type: ignore[abstract]  # the other RPCs are never called
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        keysvc_pb2_grpc.add_KeyServiceServicer_to_server(self.keysvc, self._server)
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(None)
