"""Server settings: each from a `--flag`, else a `KEYSVC_*` variable, else the embedded default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keysvc.access.admin_token import DEFAULT_DATA_DIR
from keysvc.access.admin_token import FILE_NAME as ADMIN_TOKEN_FILE
from keysvc.core import networks
from keysvc.core.errors import InvalidArgument
from keysvc.core.hashing import Argon2Parameters

DEFAULT_LISTEN = "127.0.0.1:50051"

DATABASE_FILE = "keysvc.db"


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    # Processes serving every listener side by side on the same ports (SO_REUSEPORT), each a
    # full replica, under a supervisor (keysvc.runtime.supervisor); 1: this process alone.
    workers: int = 1
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # None: the SQLite file in data_dir.
    database_url: str | None = None
    # Seconds a database call may take before the RPC answers UNAVAILABLE.
    database_timeout_seconds: float = 5.0
    # None: the in-process cache (one replica only).
    redis_url: str | None = field(default=None, repr=False)
    # What keysvc's Redis keys start with, so that one Redis can hold several deployments'.
    redis_namespace: str = "keysvc:"
    redis_timeout_seconds: float = 0.25
    health_check_seconds: float = 1.0
    # A second, plaintext listener on loopback serving only the health service (for a
    # container's health check when the main listener needs TLS); None: none.
    health_listen: str | None = None
    # None: only the admin token (generated, or $KEYSVC_ADMIN_TOKEN) may call.
    callers: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Set: clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca: Path | None = None
    # Allows a non-loopback listener without TLS.
    insecure: bool = False
    # An HTTP listener for GitHub secret scanning alerts (keysvc.api.github); None: none.
    http_listen: str | None = None
    # GitHub's secret scanning public keys, as api.github.com/meta/public_keys/secret_scanning
    # serves them; required with http_listen.
    github_keys_file: Path | None = None
    # An HTTP listener serving Prometheus metrics on /metrics (plaintext; beyond loopback
    # only with insecure); None: none, and nothing is counted.
    metrics_listen: str | None = None
    # The gateway route table (TOML, keysvc.api.gateway): with it, keysvc also serves Envoy's
    # ext_authz (envoy.service.auth.v3.Authorization) on its gRPC port; None: it does not.
    gateway_routes: Path | None = None
    # Whether an allowed request reaches the upstream without its Authorization header.
    gateway_strip_key: bool = True
    # The gateways whose forward-auth requests (on http_listen, with gateway_routes) keysvc
    # answers, and whose X-Original-*, X-Forwarded-* and X-Real-IP headers it believes.
    gateway_trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1")
    # None: the token generated into data_dir/admin-token at first start.
    admin_token: str | None = field(default=None, repr=False)
    argon2: Argon2Parameters = field(default_factory=Argon2Parameters)
    cache_ttl_seconds: float = 3600.0
    # L: how long a replica trusts what it knows of the change log, and so how long
    # RevokeKey waits before it returns (docs/revocation.md).
    lease_seconds: float = 1.0
    last_used_flush_seconds: float = 1.0
    max_message_bytes: int = 64 * 1024
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / DATABASE_FILE).resolve()}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / ADMIN_TOKEN_FILE

    @property
    def shares_ports(self) -> bool:
        """Whether this server's listeners share their ports with its sibling workers'."""
        return self.workers > 1


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return number


def _networks(value: str) -> tuple[str, ...]:
    try:
        return networks.normalized(
            (item for item in value.split(",") if item.strip()), "--gateway-trusted-proxies"
        )
    except InvalidArgument as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _true(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    help: str
    type: Callable[[str], object] = str
    is_flag: bool = False
    # The flag and variable an earlier release named this option by, still accepted.
    old_flag: str | None = None
    old_env: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


# Each option once: its flag, its variable, what it means. The defaults live in Settings;
# an option named argon2_* sets that field of Settings.argon2.
_DATA_DIR = _Option(
    "--data-dir", "KEYSVC_DATA_DIR", "directory for the SQLite file and admin token", Path
)
_DATABASE = _Option(
    "--database-url", "KEYSVC_DATABASE_URL", "SQLAlchemy URL, e.g. postgresql://user@host/db"
)
SERVE_OPTIONS = (
    _Option("--listen", "KEYSVC_LISTEN", "HOST:PORT to serve gRPC on"),
    _Option(
        "--workers",
        "KEYSVC_WORKERS",
        "processes serving the same ports, each a full replica (1: this process alone)",
        _count,
    ),
    _DATA_DIR,
    _DATABASE,
    _Option(
        "--database-timeout-seconds",
        "KEYSVC_DATABASE_TIMEOUT_SECONDS",
        "longest wait for the database before answering UNAVAILABLE",
        float,
    ),
    _Option("--redis-url", "KEYSVC_REDIS_URL", "redis:// or rediss:// URL of the shared cache"),
    _Option(
        "--redis-namespace",
        "KEYSVC_REDIS_NAMESPACE",
        "what keysvc's Redis keys start with",
        old_flag="--redis-prefix",
        old_env="KEYSVC_REDIS_PREFIX",
    ),
    _Option(
        "--redis-timeout-seconds",
        "KEYSVC_REDIS_TIMEOUT_SECONDS",
        "longest wait for Redis before deciding from the database",
        float,
    ),
    _Option(
        "--health-check-seconds",
        "KEYSVC_HEALTH_CHECK_SECONDS",
        "time between database checks of the health service",
        float,
    ),
    _Option(
        "--health-listen",
        "KEYSVC_HEALTH_LISTEN",
        "loopback HOST:PORT serving only the health service, in plaintext",
    ),
    _Option("--argon2-time-cost", "KEYSVC_ARGON2_TIME_COST", "argon2id passes", int),
    _Option("--argon2-memory-cost-kib", "KEYSVC_ARGON2_MEMORY_COST_KIB", "argon2id KiB", int),
    _Option("--argon2-parallelism", "KEYSVC_ARGON2_PARALLELISM", "argon2id lanes", int),
    _Option("--cache-ttl-seconds", "KEYSVC_CACHE_TTL_SECONDS", "lifetime of a cached key", float),
    _Option(
        "--lease-seconds",
        "KEYSVC_LEASE_SECONDS",
        "how long a replica trusts its caches without reading the change log; RevokeKey"
        " waits this long",
        _positive,
    ),
    _Option(
        "--last-used-flush-seconds",
        "KEYSVC_LAST_USED_FLUSH_SECONDS",
        "time between last-used writes",
        float,
    ),
    _Option("--max-message-bytes", "KEYSVC_MAX_MESSAGE_BYTES", "largest request accepted", int),
    _Option(
        "--shutdown-grace-seconds",
        "KEYSVC_SHUTDOWN_GRACE_SECONDS",
        "time in-flight calls get to finish",
        float,
    ),
    _Option("--log-level", "KEYSVC_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", str.upper),
    _Option("--callers", "KEYSVC_CALLERS", "TOML file of admin and authorizer callers", Path),
    _Option("--tls-cert", "KEYSVC_TLS_CERT", "PEM certificate (chain) to serve TLS with", Path),
    _Option("--tls-key", "KEYSVC_TLS_KEY", "PEM private key of --tls-cert", Path),
    _Option(
        "--tls-client-ca", "KEYSVC_TLS_CLIENT_CA", "PEM CA that client certificates need", Path
    ),
    _Option(
        "--insecure",
        "KEYSVC_INSECURE",
        "allow a non-loopback listener without TLS (traffic in clear text)",
        _true,
        is_flag=True,
    ),
    _Option(
        "--http-listen",
        "KEYSVC_HTTP_LISTEN",
        "HOST:PORT to serve GitHub secret scanning alerts on (HTTP, TLS as --tls-cert)",
    ),
    _Option(
        "--github-keys-file",
        "KEYSVC_GITHUB_KEYS_FILE",
        "JSON of GitHub's secret scanning public keys"
        " (api.github.com/meta/public_keys/secret_scanning)",
        Path,
    ),
    _Option(
        "--metrics-listen",
        "KEYSVC_METRICS_LISTEN",
        "HOST:PORT to serve Prometheus metrics on, at /metrics (plaintext HTTP; loopback"
        " unless --insecure)",
    ),
    _Option(
        "--gateway-routes",
        "KEYSVC_GATEWAY_ROUTES",
        "TOML file of the routes a gateway lets through and the scopes each needs; serves"
        " Envoy's ext_authz",
        Path,
    ),
    _Option(
        "--gateway-strip-key",
        "KEYSVC_GATEWAY_STRIP_KEY",
        "true (the default) or false: whether the upstream gets the request without its"
        " Authorization header",
        _true,
    ),
    _Option(
        "--gateway-trusted-proxies",
        "KEYSVC_GATEWAY_TRUSTED_PROXIES",
        "comma-separated addresses and CIDR ranges of the gateways whose forward-auth requests"
        " --http-listen answers (default: 127.0.0.0/8,::1)",
        _networks,
    ),
)
MIGRATE_OPTIONS = (_DATA_DIR, _DATABASE)


def add_options(parser: argparse.ArgumentParser, options: tuple[_Option, ...]) -> None:
    for option in options:
        help = f"{option.help} (${option.env})"
        flags = [option.flag, *([option.old_flag] if option.old_flag else [])]
        if option.is_flag:
            parser.add_argument(
                *flags, dest=option.dest, action="store_const", const=True, help=help
            )
        else:
            parser.add_argument(*flags, dest=option.dest, type=option.type, default=None, help=help)


def settings_from(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from parsed flags, falling back to the environment, then to the defaults."""
    values: dict[str, Any] = {}
    argon2: dict[str, Any] = {}
    for option in SERVE_OPTIONS:
        value = getattr(args, option.dest, None)
        variable = next((v for v in (option.env, option.old_env) if v and env.get(v)), None)
        if value is None and variable is not None:
            try:
                value = option.type(env[variable])
            except (ValueError, argparse.ArgumentTypeError) as err:
                raise SystemExit(f"keysvc: ${variable}: {err}") from err
        if value is None:
            continue
        if option.dest.startswith("argon2_"):
            argon2[option.dest.removeprefix("argon2_")] = value
        else:
            values[option.dest] = value
    settings = replace(Settings(), **values, admin_token=env.get("KEYSVC_ADMIN_TOKEN") or None)
    return replace(settings, argon2=replace(settings.argon2, **argon2))
