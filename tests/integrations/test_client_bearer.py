"""keysvc_client reads `Authorization: Bearer <key>` one way everywhere: a Guard answers a header
without a key itself, and no error or log line carries the key, bare or in its header."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from keysvc_client import Guard, InvalidArgument, KeyServiceClient, aio, keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

# Nothing listens there: a Guard that calls keysvc answers 503.
UNREACHABLE = "127.0.0.1:1"
KEY = "ck_test_" + "Q" * 50


class EchoingKeysvc(keysvc_pb2_grpc.KeyServiceServicer):
    """A careless server whose Authorize refusal quotes the bare key it was sent."""

    def Authorize(
        self, request: keysvc_pb2.AuthorizeRequest, context: grpc.ServicerContext
    ) -> keysvc_pb2.AuthorizeResponse:
        bare = request.api_key.split()[-1]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"api_key: cannot use {bare}")


@pytest.fixture(scope="module")
def echoing() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # Only Authorize is served; the generated stubs declare every RPC abstract.
    servicer = EchoingKeysvc()  # type: ignore[abstract]
    keysvc_pb2_grpc.add_KeyServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


HEADERS_WITHOUT_A_KEY = ["Bearer", "bearer   ", "BEARER\t", "  Bearer  "]


class TestHeaderWithoutAKey:
    @pytest.mark.parametrize("header", HEADERS_WITHOUT_A_KEY)
    def test_the_guard_answers_missing_itself(self, header: str) -> None:
        """A Bearer header with nothing after it (any case, any spacing) is 401 missing,
        decided without keysvc: unreachable, it would have been 503."""
        with Guard(UNREACHABLE, timeout=1.0) as guard:
            verdict = guard.check(header)

        assert (verdict.status, verdict.reason) == (401, "missing")

    @pytest.mark.parametrize("header", HEADERS_WITHOUT_A_KEY)
    def test_the_asyncio_guard_answers_missing_itself(self, header: str) -> None:
        """The asyncio Guard reads the header the same way."""

        async def check() -> tuple[int, str]:
            async with aio.Guard(UNREACHABLE, timeout=1.0) as guard:
                verdict = await guard.check(header)
            return verdict.status, verdict.reason

        assert asyncio.run(check()) == (401, "missing")


class TestErrorsNeverCarryTheKey:
    @pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer   {KEY} ", f"BEARER {KEY}"])
    def test_the_clients_error_has_the_key_redacted(self, echoing: str, header: str) -> None:
        """The bare key inside a Bearer header is cut out of the error's details."""
        with (
            KeyServiceClient(echoing, timeout=5.0) as client,
            pytest.raises(InvalidArgument) as err,
        ):
            client.authorize(header)

        assert err.value.details == "api_key: cannot use [redacted]"
        assert KEY not in str(err.value)

    def test_the_guards_log_has_the_key_redacted(
        self, echoing: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A Guard logs keysvc's refusal of its own call without the key it was checking."""
        caplog.set_level(logging.ERROR, logger="keysvc_client.guard")
        with Guard(echoing, timeout=5.0) as guard:
            verdict = guard.check(f"Bearer {KEY}")

        assert (verdict.status, verdict.reason) == (500, "misconfigured")
        assert "api_key: cannot use [redacted]" in caplog.text
        assert KEY not in caplog.text
