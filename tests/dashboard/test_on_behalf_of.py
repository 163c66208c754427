"""The client's on_behalf_of: every call says for whom an admin tool acts, and keysvc's audit
trail names both."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from keysvc_client import KeyServiceClient
from keysvc_client import aio as keysvc_aio

from tests.e2e.harness import ServerProcess

pytestmark = pytest.mark.slow


def account() -> str:
    return f"acct_{uuid.uuid4().hex[:12]}"


class TestOnBehalfOf:
    def test_the_blocking_client_names_the_user(self, keysvc_server: ServerProcess) -> None:
        """Every call carries the user: created and revoked as 'ada via admin-token'."""
        acct = account()
        with KeyServiceClient(
            keysvc_server.target, admin_token=keysvc_server.admin_token, on_behalf_of="ada"
        ) as client:
            created = client.create_key(acct, "n", "test", ["links:read"])
            client.revoke_key(acct, created.key.id)
            actors = [event.actor for event in client.iter_audit_events(acct)]
        assert actors == ["ada via admin-token", "ada via admin-token"]

    def test_the_asyncio_client_names_the_user(self, keysvc_server: ServerProcess) -> None:
        """The asyncio client sends the user just as the blocking one does."""
        acct = account()

        async def run() -> list[str]:
            async with keysvc_aio.KeyServiceClient(
                keysvc_server.target,
                admin_token=keysvc_server.admin_token,
                on_behalf_of="grace@example.com",
            ) as client:
                await client.create_key(acct, "n", "test", ["links:read"])
                return [event.actor async for event in client.iter_audit_events(acct)]

        assert asyncio.run(run()) == ["grace@example.com via admin-token"]

    def test_without_it_the_caller_alone_is_named(self, keysvc_server: ServerProcess) -> None:
        """Without on_behalf_of the trail names the caller alone, as before."""
        acct = account()
        with keysvc_server.client() as client:
            client.create_key(acct, "n", "test", ["links:read"])
            assert [e.actor for e in client.iter_audit_events(acct)] == ["admin-token"]

    @pytest.mark.parametrize("value", ["", "   ", "ünïcode", "two\nlines"])
    def test_a_value_that_cannot_be_sent_is_refused_at_once(self, value: str) -> None:
        """Blank or non-ASCII values are a ValueError when the client is built, not on a call."""
        with pytest.raises(ValueError, match="on_behalf_of"):
            KeyServiceClient("127.0.0.1:1", admin_token="t", on_behalf_of=value)
