"""The scope catalogue and the checks on granted and required scopes."""

from __future__ import annotations

import pytest

from keysvc.core import scopes
from keysvc.core.errors import InvalidArgument

# The product page's "Available scopes" table, word for word.
PRODUCT_PAGE_SCOPES = {
    "links:read": "List and retrieve payment links",
    "links:write": "Create, update, and delete payment links",
    "sessions:read": "List and retrieve checkout sessions",
    "sessions:write": "Create checkout sessions",
    "webhooks:read": "List and retrieve webhook endpoints",
    "webhooks:write": "Create and delete webhook endpoints",
    "events:read": "List and retrieve events",
    "customers:read": "List and retrieve customers",
    "customers:write": "Create and update customers",
}


class TestCatalogue:
    def test_is_exactly_the_product_page_scopes(self) -> None:
        """The catalogue holds the nine scopes of the product page with their descriptions."""
        assert dict(scopes.CATALOGUE) == PRODUCT_PAGE_SCOPES

    def test_cannot_be_changed_at_run_time(self) -> None:
        """The catalogue is read-only data: nobody can add a scope in passing."""
        with pytest.raises(TypeError):
            scopes.CATALOGUE["admin:all"] = "everything"  # type: ignore[index]


class TestGrantable:
    def test_folds_duplicates_and_sorts(self) -> None:
        """Requested scopes come back once each, sorted."""
        granted = scopes.grantable(["webhooks:read", "links:write", "webhooks:read", "links:read"])
        assert granted == ("links:read", "links:write", "webhooks:read")

    def test_accepts_every_catalogue_scope(self) -> None:
        """A key may be granted the whole catalogue."""
        assert scopes.grantable(PRODUCT_PAGE_SCOPES) == tuple(sorted(PRODUCT_PAGE_SCOPES))

    def test_write_does_not_imply_read(self) -> None:
        """Granting links:write grants links:write alone, not links:read."""
        assert scopes.grantable(["links:write"]) == ("links:write",)

    def test_refuses_no_scopes(self) -> None:
        """A key needs at least one scope, and the message says so."""
        with pytest.raises(InvalidArgument, match="at least one scope"):
            scopes.grantable([])

    def test_refuses_an_unknown_scope_and_lists_the_valid_ones(self) -> None:
        """An unknown scope is refused by name, with every valid scope listed for the caller."""
        with pytest.raises(InvalidArgument) as caught:
            scopes.grantable(["links:read", "links:delete"])
        message = str(caught.value)
        assert "links:delete" in message
        for name in PRODUCT_PAGE_SCOPES:
            assert name in message

    def test_refuses_near_misses(self) -> None:
        """Scopes match exactly: no case folding, no padding, no wildcards."""
        for near_miss in ["Links:read", " links:read", "links:*", "links", "*"]:
            with pytest.raises(InvalidArgument):
                scopes.grantable([near_miss])


class TestRequired:
    def test_accepts_known_scopes_and_none(self) -> None:
        """Required scopes may be any catalogue scopes, or none at all."""
        assert scopes.required(["events:read", "events:read"]) == frozenset({"events:read"})
        assert scopes.required([]) == frozenset()

    def test_refuses_an_unknown_scope(self) -> None:
        """An API server asking for an unknown scope has a bug, and is told which scope."""
        with pytest.raises(InvalidArgument) as caught:
            scopes.required(["links:read", "payouts:write"])
        assert "payouts:write" in str(caught.value)
        assert "required_scopes" in str(caught.value)
