"""gRPC API servers: server interceptors that check the bearer key in each call's metadata.

    interceptor = KeysvcInterceptor(keysvc_client.Guard("127.0.0.1:50051"), methods={
        "/links.v1.Links/ListLinks": "links:read",
        "/links.v1.Links/CreateLink": "links:write",
    })
    server = grpc.server(executor, interceptors=[interceptor])

    def ListLinks(self, request, context):
        key = current_key()                  # the authorized key

grpc.aio servers take AsyncKeysvcInterceptor, with a keysvc_client.aio.Guard.

A refused call ends with UNAUTHENTICATED (401), PERMISSION_DENIED (403) or UNAVAILABLE (keysvc
could not decide), and trailing metadata `keysvc-reason` naming why; the handler never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

import grpc

from keysvc_client import _aio_guard, _guard
from keysvc_client._guard_common import (
    KeyContext,
    Verdict,
    authorization_value,
    grpc_status,
    route_table,
)

__all__ = ["AsyncKeysvcInterceptor", "KeysvcInterceptor", "current_key"]

log = logging.getLogger("keysvc_client.guard")

_CURRENT: contextvars.ContextVar[KeyContext | None] = contextvars.ContextVar(
    "keysvc_key", default=None
)

# "/package.Service/Method", or "/package.Service/*" for every method of the service.
_METHOD = re.compile(r"/[^/\s]+/(?:[^/\s*]+|\*)")

_Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Authorize: TypeAlias = Callable[[grpc.ServicerContext], KeyContext]


def current_key() -> KeyContext:
    """The key the interceptor authorized for the call being handled.

    Raises LookupError outside a protected method: an unprotected call has no key.
    """
    key = _CURRENT.get()
    if key is None:
        raise LookupError("this call's key was not checked: declare the method to the interceptor")
    return key


class _Methods:
    """Which scopes each method needs; None for methods of services the table does not name."""

    def __init__(self, methods: Mapping[str, str | Iterable[str]]) -> None:
        self.exact: dict[str, tuple[str, ...]] = {}
        self.services: dict[str, tuple[str, ...] | None] = {}
        for method, scopes in route_table(methods).items():
            if not _METHOD.fullmatch(method):
                raise ValueError(
                    f"method {method!r} is not '/package.Service/Method' or '/package.Service/*'"
                )
            service, _, name = method.rpartition("/")
            if name == "*":
                self.services[service] = scopes
            else:
                self.exact[method] = scopes
                self.services.setdefault(service, None)

    def required(self, method: str) -> tuple[str, ...] | None:
        """The scopes `method` needs; None when not protected; () if any valid key will do.

        Raises LookupError for an undeclared method of a declared service.
        """
        if method in self.exact:
            return self.exact[method]
        service = method.rpartition("/")[0]
        if service not in self.services:
            return None
        scopes = self.services[service]
        if scopes is None:
            raise LookupError(method)
        return scopes


def _authorization(metadata: _Metadata | None) -> str | None:
    values = [v for k, v in metadata or () if k.lower() == "authorization" and isinstance(v, str)]
    return authorization_value(values)


def _undeclared(method: str) -> Verdict:
    # The method name comes from the caller: repr keeps it on one log line.
    log.error("%r is not in the interceptor's methods: refusing with UNIMPLEMENTED", method)
    return Verdict(status=404, reason="not_found", message="method not available")


def _code(verdict: Verdict) -> grpc.StatusCode:
    return grpc.StatusCode.UNIMPLEMENTED if verdict.status == 404 else grpc_status(verdict)


class KeysvcInterceptor(grpc.ServerInterceptor):
    """For grpc.server: checks the calls of the services named in `methods` with a Guard.

    `methods` maps "/package.Service/Method" (or "/package.Service/*") to the scope or scopes
    it needs; an empty list means any valid key. A method of a named service that the table
    leaves out is refused with UNIMPLEMENTED, so it is unreachable, never unprotected. Other
    services (health, reflection) pass through.
    """

    def __init__(self, guard: _guard.Guard, methods: Mapping[str, str | Iterable[str]]) -> None:
        if not isinstance(guard, _guard.Guard):
            raise TypeError(
                "KeysvcInterceptor needs a keysvc_client.Guard; grpc.aio servers "
                "take AsyncKeysvcInterceptor with a keysvc_client.aio.Guard"
            )
        self._guard = guard
        self._methods = _Methods(methods)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return None
        try:
            required = self._methods.required(method)
        except LookupError:
            return _wrap(handler, lambda context: _refuse(context, _undeclared(method)))
        if required is None:
            return handler
        checked = required

        def authorize(context: grpc.ServicerContext) -> KeyContext:
            metadata = context.invocation_metadata()
            verdict = self._guard.check(
                _authorization(metadata),
                checked,
                client_ip=self._guard.trusted_proxies.grpc_client(context.peer(), metadata),
            )
            if not verdict.allowed or verdict.key is None:
                _refuse(context, verdict)
            assert verdict.key is not None
            return verdict.key

        return _wrap(handler, authorize)


def _refuse(context: grpc.ServicerContext, verdict: Verdict) -> KeyContext:
    context.set_trailing_metadata((("keysvc-reason", verdict.reason),))
    context.abort(_code(verdict), verdict.message)
    raise AssertionError("abort() returned")  # pragma: no cover


def _wrap(handler: _Handler, authorize: _Authorize) -> _Handler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, authorize), **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, authorize), **codec
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, authorize), **codec
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, authorize), **codec
        )
    raise TypeError("a gRPC method handler without a behaviour")


def _unary(
    behaviour: Callable[[Any, grpc.ServicerContext], Any],
    authorize: _Authorize,
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        token = _CURRENT.set(authorize(context))
        try:
            return behaviour(request, context)
        finally:
            _CURRENT.reset(token)

    return checked


def _streaming(
    behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
    authorize: _Authorize,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def checked(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        key = authorize(context)
        responses = iter(_in_context(key, lambda: behaviour(request, context)))
        while True:
            # The handler's generator runs a step at a time on gRPC's thread: the key is set
            # around each step only, so it never outlives the call on a pooled thread.
            try:
                response = _in_context(key, lambda: next(responses))
            except StopIteration:
                return
            yield response

    return checked


def _in_context(key: KeyContext, step: Callable[[], Any]) -> Any:
    token = _CURRENT.set(key)
    try:
        return step()
    finally:
        _CURRENT.reset(token)


class AsyncKeysvcInterceptor(grpc.aio.ServerInterceptor):
    """For grpc.aio.server, with a keysvc_client.aio.Guard; see KeysvcInterceptor.

    Async handlers are checked on the event loop. Sync handlers (a grpc.aio server with a
    migration_thread_pool) stay sync, so grpc.aio still runs them in its thread pool with the
    context and streaming it gives sync handlers; their check runs on the server's event loop.
    """

    def __init__(self, guard: _aio_guard.Guard, methods: Mapping[str, str | Iterable[str]]) -> None:
        if not isinstance(guard, _aio_guard.Guard):
            raise TypeError("AsyncKeysvcInterceptor needs a keysvc_client.aio.Guard")
        self._guard = guard
        self._methods = _Methods(methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        loop = asyncio.get_running_loop()
        try:
            required = self._methods.required(method)
        except LookupError:
            verdict = _undeclared(method)

            async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> KeyContext:
                return await _refuse_async(context, verdict)

            if _is_async(handler):
                return _wrap_async(handler, refuse)
            return _wrap(handler, lambda context: _refuse(context, verdict))
        if required is None:
            return handler
        checked = required

        async def check(peer: str, metadata: _Metadata | None) -> Verdict:
            client_ip = self._guard.trusted_proxies.grpc_client(peer, metadata)
            return await self._guard.check(_authorization(metadata), checked, client_ip=client_ip)

        if not _is_async(handler):

            def authorize_sync(context: grpc.ServicerContext) -> KeyContext:
                # On grpc.aio's thread pool: the Guard's channel lives on the server's loop.
                future = asyncio.run_coroutine_threadsafe(
                    check(context.peer(), context.invocation_metadata()), loop
                )
                verdict = future.result()
                if not verdict.allowed or verdict.key is None:
                    _refuse(context, verdict)
                assert verdict.key is not None
                return verdict.key

            return _wrap(handler, authorize_sync)

        async def authorize(context: grpc.aio.ServicerContext[Any, Any]) -> KeyContext:
            verdict = await check(context.peer(), context.invocation_metadata())
            if not verdict.allowed or verdict.key is None:
                return await _refuse_async(context, verdict)
            return verdict.key

        return _wrap_async(handler, authorize)


def _is_async(handler: _Handler) -> bool:
    """Whether grpc.aio runs the handler's behaviour on the event loop (else on its thread
    pool), told apart as grpc.aio tells them apart."""
    behaviour = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


async def _refuse_async(
    context: grpc.aio.ServicerContext[Any, Any], verdict: Verdict
) -> KeyContext:
    context.set_trailing_metadata((("keysvc-reason", verdict.reason),))
    await context.abort(_code(verdict), verdict.message)
    raise AssertionError("abort() returned")  # pragma: no cover


_AsyncAuthorize: TypeAlias = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[KeyContext]]


def _wrap_async(handler: _Handler, authorize: _AsyncAuthorize) -> _Handler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _async_behaviour(handler.unary_unary, authorize), **codec
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _async_behaviour(handler.stream_unary, authorize), **codec
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _async_behaviour(handler.unary_stream, authorize), **codec
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _async_behaviour(handler.stream_stream, authorize), **codec
        )
    raise TypeError("a gRPC method handler without a behaviour")


def _async_behaviour(
    behaviour: Callable[..., Any], authorize: _AsyncAuthorize
) -> Callable[..., Any]:
    # Each call runs in a task of its own, with a copy of the context: setting the key there
    # reaches the handler and nothing else.
    if inspect.isasyncgenfunction(behaviour):

        async def streamed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            _CURRENT.set(await authorize(context))
            async for response in behaviour(request, context):
                yield response

        return streamed

    async def awaited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _CURRENT.set(await authorize(context))
        return await behaviour(request, context)

    return awaited
