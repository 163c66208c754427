"""API servers written in gRPC: the interceptors read the bearer key from each call's metadata
and answer UNAUTHENTICATED, PERMISSION_DENIED or UNAVAILABLE before any handler runs.

Each specification runs on a grpc.server with KeysvcInterceptor, and with AsyncKeysvcInterceptor
on a grpc.aio.server with async handlers and on one with sync handlers (a migration thread
pool), all against a real keysvc.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from keysvc_client import Guard, aio
from keysvc_client.integrations.grpc import AsyncKeysvcInterceptor, KeysvcInterceptor, current_key

from tests.e2e.harness import ServerProcess

from .conftest import TIMEOUT, Keys

pytestmark = pytest.mark.slow

METHODS = {
    "/links.v1.Links/ListLinks": "links:read",
    "/links.v1.Links/CreateLink": ["links:write"],
    "/links.v1.Links/WatchLinks": ["links:read"],
}


def whose() -> str:
    """What a handler answers: the key it was given, or that it had none."""
    try:
        key = current_key()
    except LookupError:
        return "no key"
    return f"{key.key_id} {key.account_id} {key.mode} {','.join(key.scopes)}"


@dataclass
class LinksServer:
    """A gRPC API server with a links service (protected) and a public one (not)."""

    target: str
    ran: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # every method it serves


Services = dict[str, dict[str, "grpc.RpcMethodHandler[StringValue, StringValue]"]]


def register(
    server: grpc.Server | grpc.aio.Server, services: Services, served: LinksServer
) -> None:
    for service, methods in services.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
        served.methods.extend(f"/{service}/{method}" for method in methods)


def sync_handlers(ran: list[str]) -> Services:
    def unary(name: str) -> grpc.RpcMethodHandler[StringValue, StringValue]:
        def handle(request: StringValue, context: grpc.ServicerContext) -> StringValue:
            ran.append(name)
            return StringValue(value=whose())

        return grpc.unary_unary_rpc_method_handler(
            handle, StringValue.FromString, StringValue.SerializeToString
        )

    def watch(request: StringValue, context: grpc.ServicerContext) -> Iterator[StringValue]:
        ran.append("WatchLinks")
        for _ in range(3):
            yield StringValue(value=whose())

    links = {name: unary(name) for name in ("ListLinks", "CreateLink", "Forgotten")} | {
        "WatchLinks": grpc.unary_stream_rpc_method_handler(
            watch, StringValue.FromString, StringValue.SerializeToString
        )
    }
    return {"links.v1.Links": links, "public.v1.Public": {"Ping": unary("Ping")}}


def async_handlers(ran: list[str]) -> Services:
    def unary(name: str) -> grpc.RpcMethodHandler[StringValue, StringValue]:
        async def handle(request: StringValue, context: Any) -> StringValue:
            ran.append(name)
            await asyncio.sleep(0)
            return StringValue(value=whose())

        return grpc.unary_unary_rpc_method_handler(
            handle, StringValue.FromString, StringValue.SerializeToString
        )

    async def watch(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        ran.append("WatchLinks")
        for _ in range(3):
            await asyncio.sleep(0)
            yield StringValue(value=whose())

    links = {name: unary(name) for name in ("ListLinks", "CreateLink", "Forgotten")} | {
        "WatchLinks": grpc.unary_stream_rpc_method_handler(
            watch, StringValue.FromString, StringValue.SerializeToString
        )
    }
    return {"links.v1.Links": links, "public.v1.Public": {"Ping": unary("Ping")}}


def run_sync(
    keysvc_target: str, methods: Mapping[str, Any], listen: str = "127.0.0.1", **guard: Any
) -> Iterator[LinksServer]:
    """A grpc.server on `listen` ("[::]": every address, IPv4 and IPv6) with a Guard of
    `guard`'s settings."""
    checker = Guard(keysvc_target, **{"timeout": TIMEOUT, **guard})
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[KeysvcInterceptor(checker, methods)],
    )
    served = LinksServer("")
    register(server, sync_handlers(served.ran), served)
    served.target = f"127.0.0.1:{server.add_insecure_port(f'{listen}:0')}"
    server.start()
    yield served
    server.stop(None)
    checker.close()


def run_async(
    keysvc_target: str,
    methods: Mapping[str, Any],
    handlers: Callable[[list[str]], Services] = async_handlers,
    listen: str = "127.0.0.1",
    **guard: Any,
) -> Iterator[LinksServer]:
    """A grpc.aio server on an event loop of its own thread, as an asyncio API server runs.

    With sync handlers it has a migration thread pool, as a service moving to grpc.aio keeps
    its blocking handlers: grpc.aio runs them there, streaming included.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    served = LinksServer("")

    async def start() -> grpc.aio.Server:
        checker = aio.Guard(keysvc_target, **{"timeout": TIMEOUT, **guard})
        interceptor = AsyncKeysvcInterceptor(checker, methods)
        pool = futures.ThreadPoolExecutor(max_workers=4) if handlers is sync_handlers else None
        server = grpc.aio.server(interceptors=[interceptor], migration_thread_pool=pool)
        register(server, handlers(served.ran), served)
        served.target = f"127.0.0.1:{server.add_insecure_port(f'{listen}:0')}"
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
    yield served
    asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


def run_async_with_sync_handlers(
    keysvc_target: str, methods: Mapping[str, Any], listen: str = "127.0.0.1", **guard: Any
) -> Iterator[LinksServer]:
    return run_async(keysvc_target, methods, sync_handlers, listen, **guard)


RUNNERS: dict[str, Callable[..., Iterator[LinksServer]]] = {
    "grpc.server": run_sync,
    "grpc.aio.server": run_async,
    "grpc.aio.server+sync handlers": run_async_with_sync_handlers,
}


@pytest.fixture(params=RUNNERS)
def start(
    request: pytest.FixtureRequest, server: ServerProcess
) -> Iterator[Callable[..., LinksServer]]:
    """start(keysvc_target=..., methods=...): a links server of the flavour, against the
    shared keysvc, protecting METHODS."""
    running: list[Iterator[LinksServer]] = []

    def run(
        keysvc_target: str = server.target, methods: Mapping[str, Any] = METHODS
    ) -> LinksServer:
        runner = RUNNERS[request.param](keysvc_target, methods)
        running.append(runner)
        return next(runner)

    yield run
    for runner in running:
        next(runner, None)


@pytest.fixture
def links(start: Callable[..., LinksServer]) -> LinksServer:
    return start()


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    values: list[str]
    reason: str | None = None
    details: str = ""


def call(target: str, method: str, authorization: str | None = None) -> Outcome:
    metadata = () if authorization is None else (("authorization", authorization),)
    with grpc.insecure_channel(target) as channel:
        try:
            if method.endswith("WatchLinks"):
                stream = channel.unary_stream(
                    method, StringValue.SerializeToString, StringValue.FromString
                )(StringValue(), metadata=metadata, timeout=TIMEOUT)
                values = [message.value for message in stream]
            else:
                unary = channel.unary_unary(
                    method, StringValue.SerializeToString, StringValue.FromString
                )
                values = [unary(StringValue(), metadata=metadata, timeout=TIMEOUT).value]
        except grpc.RpcError as err:
            failed: Any = err  # the errors grpc raises are grpc.Call too
            reasons = [v for k, v in failed.trailing_metadata() or () if k == "keysvc-reason"]
            return Outcome(failed.code(), [], reasons[0] if reasons else None, failed.details())
    return Outcome(grpc.StatusCode.OK, values)


LIST = "/links.v1.Links/ListLinks"
CREATE = "/links.v1.Links/CreateLink"


class TestAuthorized:
    def test_the_handler_reads_the_key_with_current_key(
        self, links: LinksServer, keys: Keys
    ) -> None:
        created = keys.new(["links:read", "links:write"], mode="test")
        outcome = call(links.target, LIST, f"Bearer {created.secret}")
        assert outcome == Outcome(
            grpc.StatusCode.OK, [f"{created.key.id} {keys.account} test links:read,links:write"]
        )

    def test_a_streaming_handler_has_the_key_at_every_step(
        self, links: LinksServer, keys: Keys
    ) -> None:
        """All three messages reach the caller, a sync generator's on grpc.aio included."""
        created = keys.new(["links:read"])
        outcome = call(links.target, "/links.v1.Links/WatchLinks", created.secret)
        assert outcome.code == grpc.StatusCode.OK
        assert [value.split()[0] for value in outcome.values] == [created.key.id] * 3

    def test_other_services_pass_without_a_key_and_see_none(
        self, links: LinksServer, keys: Keys
    ) -> None:
        call(links.target, LIST, keys.bearer())  # a key checked before must not linger
        assert call(links.target, "/public.v1.Public/Ping") == Outcome(
            grpc.StatusCode.OK, ["no key"]
        )

    def test_a_whole_service_can_be_declared_at_once(
        self, start: Callable[..., LinksServer], keys: Keys
    ) -> None:
        links = start(methods={"/links.v1.Links/*": "links:read"})
        header = keys.bearer(["links:read"])
        assert call(links.target, CREATE, header).code == grpc.StatusCode.OK
        assert call(links.target, "/links.v1.Links/Forgotten", header).code == grpc.StatusCode.OK
        assert call(links.target, CREATE).code == grpc.StatusCode.UNAUTHENTICATED


class TestRefused:
    def test_no_key_is_unauthenticated(self, links: LinksServer) -> None:
        outcome = call(links.target, LIST)
        assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAUTHENTICATED, "missing")
        assert links.ran == []

    def test_a_malformed_key_is_unauthenticated(self, links: LinksServer) -> None:
        outcome = call(links.target, LIST, "Bearer nope")
        assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAUTHENTICATED, "malformed")

    def test_a_revoked_key_is_refused_on_the_very_next_call(
        self, links: LinksServer, keys: Keys
    ) -> None:
        created = keys.new(["links:read"])
        assert call(links.target, LIST, created.secret).code == grpc.StatusCode.OK
        keys.revoke(created)
        outcome = call(links.target, LIST, created.secret)
        assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAUTHENTICATED, "revoked")
        assert links.ran == ["ListLinks"]

    def test_a_missing_scope_is_permission_denied(self, links: LinksServer, keys: Keys) -> None:
        outcome = call(links.target, CREATE, keys.bearer(["links:read"]))
        assert (outcome.code, outcome.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "insufficient_scope",
        )
        assert "links:write" in outcome.details
        assert links.ran == []

    def test_keysvc_down_is_unavailable(
        self, start: Callable[..., LinksServer], nowhere: str, keys: Keys
    ) -> None:
        links = start(keysvc_target=nowhere)
        outcome = call(links.target, LIST, keys.bearer())
        assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAVAILABLE, "unavailable")
        assert links.ran == []

    def test_an_undeclared_method_of_a_protected_service_is_unimplemented(
        self, links: LinksServer, keys: Keys
    ) -> None:
        """A method added to the service but not to the table is unreachable, never open."""
        outcome = call(links.target, "/links.v1.Links/Forgotten", keys.bearer())
        assert outcome.code == grpc.StatusCode.UNIMPLEMENTED
        assert links.ran == []


class TestMistakesFailAtConstruction:
    def test_the_wrong_guard_for_the_server(self) -> None:
        with pytest.raises(TypeError):
            KeysvcInterceptor(aio.Guard("127.0.0.1:1"), METHODS)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            AsyncKeysvcInterceptor(Guard("127.0.0.1:1"), METHODS)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "method", ["ListLinks", "links.v1.Links/ListLinks", "/links.v1.Links/"]
    )
    def test_a_method_that_is_not_a_full_name(self, method: str) -> None:
        with pytest.raises(ValueError, match=r"package\.Service"):
            KeysvcInterceptor(Guard("127.0.0.1:1"), {method: "links:read"})
