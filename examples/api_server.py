"""An API server protected by keysvc: the platform's payment links, kept in memory.

    make run        # keysvc on 127.0.0.1:50051 (in one terminal)
    make example    # this server on 127.0.0.1:8000 (in another)

    GET  /api/v1/links          needs links:read    the key's account's links
    POST /api/v1/links          needs links:write   creates one from {"name", "amount", "currency"}
    GET  /api/v1/links/{id}     needs links:read
    GET  /healthz               needs no key

Settings: --host/--port (or PORT; 127.0.0.1:8000), KEYSVC_TARGET (127.0.0.1:50051),
KEYSVC_TOKEN (an authorizer's token, if keysvc wants one), KEYSVC_TLS_CA,
KEYSVC_TLS_CLIENT_CERT and KEYSVC_TLS_CLIENT_KEY, KEYSVC_TLS_SERVER_NAME,
KEYSVC_REQUIRED_MODE (live or test: a staging server says test),
KEYSVC_TIMEOUT_SECONDS (each check's deadline; 0.05), KEYSVC_TRUSTED_PROXIES (this server's
own proxies, comma-separated addresses or CIDR ranges; none) and KEYSVC_FORWARDED_HEADER (the
header they set: x-forwarded-for or forwarded).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from keysvc_client import KeyContext
from keysvc_client.aio import Guard
from keysvc_client.integrations.starlette import authorized_key, requires
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger("examples.api_server")

CURRENCIES = ("eur", "gbp", "usd")


@dataclass
class Links:
    """Payment links by account: what a real API server would keep in its database."""

    by_account: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def of(self, key: KeyContext) -> dict[str, dict[str, Any]]:
        # Live and test data never mix, as on the real platform.
        return self.by_account.setdefault(f"{key.account_id}/{key.mode}", {})


def create_app(guard: Guard) -> Starlette:
    links = Links()

    @requires(guard, "links:read")
    async def list_links(request: Request) -> JSONResponse:
        key = authorized_key(request)
        return JSONResponse(
            {"object": "list", "data": list(links.of(key).values()), "key": key.as_dict()}
        )

    @requires(guard, "links:read")
    async def get_link(request: Request) -> JSONResponse:
        link = links.of(authorized_key(request)).get(request.path_params["link_id"])
        if link is None:
            return _error(404, "not_found", "no such payment link")
        return JSONResponse(link)

    @requires(guard, "links:write")
    async def create_link(request: Request) -> JSONResponse:
        key = authorized_key(request)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request", "the body must be JSON")
        problem = _invalid_link(body)
        if problem:
            return _error(400, "invalid_request", problem)
        link = {
            "id": f"plink_{secrets.token_urlsafe(12)}",
            "object": "payment_link",
            "account_id": key.account_id,
            "livemode": key.mode == "live",
            "name": body["name"],
            "amount": body["amount"],
            "currency": body["currency"],
            "created_by_key": key.key_id,
        }
        links.of(key)[link["id"]] = link
        return JSONResponse(link, status_code=201)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not await guard.wait_ready(timeout=1.0):
            log.warning(
                "keysvc at %s does not answer yet: /api/v1 answers 503 until it does", guard.target
            )
        yield
        await guard.close()

    return Starlette(
        routes=[
            Route("/api/v1/links", list_links, methods=["GET"]),
            Route("/api/v1/links", create_link, methods=["POST"]),
            Route("/api/v1/links/{link_id}", get_link, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def guard_from_env(env: Mapping[str, str]) -> Guard:
    """A Guard configured like keysvc's CLI: the same KEYSVC_* variables."""
    timeout = env.get("KEYSVC_TIMEOUT_SECONDS")
    return Guard(
        env.get("KEYSVC_TARGET") or "127.0.0.1:50051",
        token=env.get("KEYSVC_TOKEN") or None,
        timeout=float(timeout) if timeout else Guard.DEFAULT_TIMEOUT,
        required_mode=env.get("KEYSVC_REQUIRED_MODE") or None,
        tls_ca=env.get("KEYSVC_TLS_CA") or None,
        tls_cert=env.get("KEYSVC_TLS_CLIENT_CERT") or None,
        tls_key=env.get("KEYSVC_TLS_CLIENT_KEY") or None,
        tls_server_name=env.get("KEYSVC_TLS_SERVER_NAME") or None,
        trusted_proxies=[
            proxy.strip()
            for proxy in env.get("KEYSVC_TRUSTED_PROXIES", "").split(",")
            if proxy.strip()
        ],
        forwarded_header=env.get("KEYSVC_FORWARDED_HEADER") or "x-forwarded-for",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.api_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        guard = guard_from_env(os.environ)
    except (TypeError, ValueError) as err:
        print(f"api_server: {err}", file=sys.stderr)
        return 2
    log.info(
        "checking keys with keysvc at %s (deadline %.0f ms, mode %s)",
        guard.target,
        guard.timeout * 1000,
        guard.required_mode or "any",
    )
    # The Guard's trusted_proxies decide where a request came from: uvicorn's own proxy
    # handling (which trusts X-Forwarded-For from 127.0.0.1 by default) would decide first.
    uvicorn.run(
        create_app(guard), host=args.host, port=args.port, log_level="info", proxy_headers=False
    )
    return 0


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "reason": reason, "message": message}}, status_code=status
    )


def _invalid_link(body: object) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    name, amount, currency = body.get("name"), body.get("amount"), body.get("currency")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        return "name: a string of 1 to 200 characters"
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 10**9:
        return "amount: a positive whole number of the currency's minor unit"
    if currency not in CURRENCIES:
        return f"currency: one of {', '.join(CURRENCIES)}"
    return None


if __name__ == "__main__":
    sys.exit(main())
