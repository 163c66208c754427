"""The asyncio keysvc client: the same names and arguments as the blocking one, as coroutines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, Unpack

import grpc

from keysvc_client import _common
from keysvc_client._aio_guard import Guard
from keysvc_client._common import UNSET, ModeLike, StatusLike, Unset
from keysvc_client._connection import ChannelKeywords, Connection, connection_of
from keysvc_client._tls import channel_security
from keysvc_client.errors import from_rpc_error
from keysvc_client.v1 import keysvc_pb2, keysvc_pb2_grpc

__all__ = ["Guard", "KeyServiceClient"]


Req = TypeVar("Req")
Resp = TypeVar("Resp")


class KeyServiceClient:
    """An asyncio client for keysvc; see keysvc_client.KeyServiceClient for the semantics.

    Create it inside the running event loop that will use it (grpc.aio binds the
    channel to that loop), and close it with `async with` or `await client.close()`.
    """

    def __init__(
        self,
        target: str | Connection,
        *,
        admin_token: str | None = None,
        timeout: float = 5.0,
        on_behalf_of: str | None = None,
        **settings: Unpack[ChannelKeywords],
    ) -> None:
        connection = connection_of(
            "KeyServiceClient", target, ("admin_token", admin_token), settings
        )
        self._timeout = timeout
        self._metadata = _common.metadata_for(
            connection.token, _common.checked_on_behalf_of(on_behalf_of)
        )
        credentials, options = channel_security(connection)
        target = connection.target
        if credentials is None:
            self._channel: grpc.aio.Channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        # With grpc unannotated both channel types are Any, so mypy picks the generated
        # stub's sync overload; with grpc stubs installed it picks the async one. Any
        # type-checks in both setups.
        stub: Any = keysvc_pb2_grpc.KeyServiceStub(self._channel)
        self._stub: keysvc_pb2_grpc.KeyServiceAsyncStub = stub

    async def _call(self, rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """One call with the client's deadline and credential; KeysvcError on failure."""
        try:
            return await rpc(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err

    async def _call_with_secrets(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        secrets: Iterable[str],
    ) -> Resp:
        """_call for a request carrying raw keys: they are cut out of any error's details."""
        try:
            return await rpc(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            scrubbed = _common.scrub_secrets(error, secrets)
            if scrubbed is None:
                raise error from err
            # The original error would print the keys again in every traceback.
            raise scrubbed from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_key(
        self,
        account_id: str,
        name: str,
        mode: ModeLike,
        scopes: Iterable[str],
        *,
        expire_time: datetime | None = None,
        allowed_ips: Iterable[str] = (),
    ) -> keysvc_pb2.CreateKeyResponse:
        """Creates a key; the response's `secret` is the raw key, shown this once only.

        `expire_time` (timezone-aware, in the future) is when it stops working, None for
        never; `allowed_ips` the addresses and CIDR ranges it may be used from, empty for any.
        """
        request = _common.create_key_request(
            account_id, name, mode, scopes, expire_time=expire_time, allowed_ips=allowed_ips
        )
        return await self._call(self._stub.CreateKey, request)

    async def get_key(self, account_id: str, key_id: str) -> keysvc_pb2.Key:
        request = keysvc_pb2.GetKeyRequest(account_id=account_id, id=key_id)
        return await self._call(self._stub.GetKey, request)

    async def list_keys(
        self,
        account_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        mode: ModeLike | None = None,
        status: StatusLike | None = None,
    ) -> keysvc_pb2.ListKeysResponse:
        """One page of the account's keys, newest first; None filters mean "all"."""
        request = _common.list_keys_request(
            account_id, page_size=page_size, page_token=page_token, mode=mode, status=status
        )
        return await self._call(self._stub.ListKeys, request)

    async def iter_keys(
        self,
        account_id: str,
        *,
        page_size: int = 0,
        mode: ModeLike | None = None,
        status: StatusLike | None = None,
    ) -> AsyncIterator[keysvc_pb2.Key]:
        """Every matching key, fetching pages as the iteration reaches them.

        Each page is its own call with its own timeout, so errors surface mid-iteration.
        """
        page_token = ""
        while True:
            page = await self.list_keys(
                account_id, page_size=page_size, page_token=page_token, mode=mode, status=status
            )
            for key in page.keys:
                yield key
            page_token = page.next_page_token
            if not page_token:
                return

    async def revoke_key(self, account_id: str, key_id: str, *, reason: str = "") -> keysvc_pb2.Key:
        """Revokes the key for good, returning once no replica allows it any more.

        `reason` ("compromised", "unused", free text) is kept with the key and in the audit
        trail; revoking a revoked key keeps its first revocation and reason.
        """
        request = _common.revoke_key_request(account_id, key_id, reason)
        return await self._call(self._stub.RevokeKey, request)

    async def roll_key(
        self, account_id: str, key_id: str, *, grace: timedelta
    ) -> keysvc_pb2.RollKeyResponse:
        """Replaces the key with a new one of the same name, mode, scopes, allowed IPs and
        expiry; the old one keeps working for `grace` (never past its own expiry), and a grace
        of 0 revokes it at once. The response's `secret` is the new raw key, shown this once
        only; `rolled` is the old key as it now is.
        """
        request = _common.roll_key_request(account_id, key_id, grace)
        return await self._call(self._stub.RollKey, request)

    async def update_key(
        self,
        account_id: str,
        key_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] | None = None,
        allowed_ips: Iterable[str] | None = None,
        expire_time: datetime | Literal[Unset.UNSET] | None = UNSET,
    ) -> keysvc_pb2.Key:
        """Changes the fields given and no other: an argument left out is left as it is.

        `allowed_ips=[]` lets the key be used from any address again; `expire_time=None` makes
        it never expire. A narrowing change holds like a revocation once this returns.
        """
        request = _common.update_key_request(
            account_id,
            key_id,
            name=name,
            scopes=scopes,
            allowed_ips=allowed_ips,
            expire_time=expire_time,
        )
        return await self._call(self._stub.UpdateKey, request)

    async def revoke_leaked_keys(
        self, keys: Iterable[str], *, source: str = ""
    ) -> keysvc_pb2.RevokeLeakedKeysResponse:
        """Revokes the real keys among `keys` (raw keys found in the open, of any account), and
        says for each, in order, whether it was revoked now, was already, or is no key at all.
        `source` (where they were found) goes into the audit trail. Admin only.
        """
        request = _common.revoke_leaked_keys_request(keys, source)
        return await self._call_with_secrets(self._stub.RevokeLeakedKeys, request, request.keys)

    async def authorize(
        self,
        api_key: str,
        required_scopes: Iterable[str] = (),
        required_mode: ModeLike | None = None,
        client_ip: str = "",
    ) -> keysvc_pb2.AuthorizeResponse:
        """keysvc's decision on `api_key`; a refusal is a normal response, not an exception.

        `client_ip` is the address the API request came from: a key restricted to allowed IPs
        is refused without it. Unavailable means no decision was made: the caller must not
        treat it as allowed.
        """
        request = _common.authorize_request(api_key, required_scopes, required_mode, client_ip)
        return await self._call_with_secrets(self._stub.Authorize, request, (api_key,))

    async def list_scopes(self) -> list[keysvc_pb2.Scope]:
        """The scope catalogue keys can be granted from."""
        response = await self._call(self._stub.ListScopes, keysvc_pb2.ListScopesRequest())
        return list(response.scopes)

    async def list_audit_events(
        self, account_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> keysvc_pb2.ListAuditEventsResponse:
        """One page of the account's audit trail (key creations, rolls, updates and
        revocations), newest first."""
        request = keysvc_pb2.ListAuditEventsRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )
        return await self._call(self._stub.ListAuditEvents, request)

    async def iter_audit_events(
        self, account_id: str, *, page_size: int = 0
    ) -> AsyncIterator[keysvc_pb2.AuditEvent]:
        """Every audit event of the account, newest first, fetching pages as needed.

        Each page is its own call with its own timeout, so errors surface mid-iteration.
        """
        page_token = ""
        while True:
            page = await self.list_audit_events(
                account_id, page_size=page_size, page_token=page_token
            )
            for event in page.events:
                yield event
            page_token = page.next_page_token
            if not page_token:
                return
