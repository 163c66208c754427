"""The scope catalogue: what a key may be granted, kept as data in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from keysvc.core.errors import InvalidArgument

# From the product page's scopes table. Scopes are independent: write does not
# imply read, so a key that must list links and create them needs both.
CATALOGUE: Mapping[str, str] = MappingProxyType(
    {
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
)


def _check_known(scopes: Iterable[str], what: str) -> frozenset[str]:
    folded = frozenset(scopes)
    unknown = sorted(folded - CATALOGUE.keys())
    if unknown:
        raise InvalidArgument(
            f"{what}: unknown scope{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(s[:64]) for s in unknown[:5])}; "
            f"valid scopes are {', '.join(CATALOGUE)}"
        )
    return folded


def grantable(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes a new key gets: at least one, all known, duplicates folded, sorted."""
    folded = _check_known(scopes, "scopes")
    if not folded:
        raise InvalidArgument(
            f"scopes: a key needs at least one scope; valid scopes are {', '.join(CATALOGUE)}"
        )
    return tuple(sorted(folded))


def required(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes an API server requires for a request; an unknown one is the caller's bug."""
    return _check_known(scopes, "required_scopes")
