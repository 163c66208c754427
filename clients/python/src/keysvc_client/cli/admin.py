"""`keysvc keys ...`, `keysvc audit list`, `keysvc authorize`, `keysvc scopes`: commands over
the typed client.

They talk to a running server, never to its database, so they need nothing of the server package.
A raw key is printed only where one is made (`keys create`, `keys roll`); keys read from
standard input (`keys revoke-leaked`, `authorize`) are never printed back.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc_client._common import UNSET, Unset
from keysvc_client._connection import Connection
from keysvc_client._sync import KeyServiceClient
from keysvc_client._tls import channel_security
from keysvc_client.cli import admin_token, when
from keysvc_client.errors import KeysvcError
from keysvc_client.v1 import keysvc_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_DENIED = 1
EXIT_FAILED = 2
# RevokeLeakedKeys takes at most this many keys a call; the command sends them in batches.
LEAKED_KEYS_PER_CALL = 100
STORE_IT_NOW = "Store this key now: it is shown this once and can never be retrieved again."


Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """The command cannot run as asked; the message says why."""


def _reported(command: Command) -> Command:
    """`command` with its failures printed as one `keysvc: ...` line and exit status 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CommandError as err:
            print(f"keysvc: {err}", file=sys.stderr)
        except KeysvcError as err:
            print(f"keysvc: {err.code.name}: {err.details}", file=sys.stderr)
        except ValueError as err:
            print(f"keysvc: {err}", file=sys.stderr)
        return EXIT_FAILED

    return run


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that talks to a server: add_connection_options, --json."""
    add_connection_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Where keysvc is and how to reach it: --target, --data-dir (the admin-token file),
    --timeout and the TLS options; admin_connection(args) reads them. Other programs that call
    keysvc as an admin (`keysvc dashboard serve`) take them from here, to take them alike."""
    parser.add_argument(
        "--target",
        default=os.environ.get("KEYSVC_TARGET", DEFAULT_TARGET),
        help=f"keysvc address, HOST:PORT ($KEYSVC_TARGET, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("KEYSVC_DATA_DIR", admin_token.DEFAULT_DATA_DIR)),
        help="where the server keeps its generated admin-token file ($KEYSVC_DATA_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("KEYSVC_TLS", "").lower() in ("1", "true", "yes"),
        help="connect with TLS, trusting the system's CAs ($KEYSVC_TLS)",
    )
    for flag, variable, text in (
        ("--tls-ca", "KEYSVC_TLS_CA", "PEM CA that signed the server's certificate"),
        ("--tls-cert", "KEYSVC_TLS_CLIENT_CERT", "PEM client certificate, for mutual TLS"),
        ("--tls-key", "KEYSVC_TLS_CLIENT_KEY", "PEM private key of --tls-cert"),
    ):
        value = os.environ.get(variable)
        tls.add_argument(
            flag, type=Path, default=Path(value) if value else None, help=f"{text} (${variable})"
        )
    tls.add_argument(
        "--tls-server-name",
        default=os.environ.get("KEYSVC_TLS_SERVER_NAME") or None,
        help="name the server's certificate holds, if not the target's host"
        " ($KEYSVC_TLS_SERVER_NAME)",
    )


def _token(args: argparse.Namespace, *, required: bool) -> str | None:
    """The CLI's credential: $KEYSVC_TOKEN, else $KEYSVC_ADMIN_TOKEN, else the admin-token
    file of the server's data directory. None only when not `required` and there is none."""
    for variable in ("KEYSVC_TOKEN", "KEYSVC_ADMIN_TOKEN"):
        token = os.environ.get(variable)
        if token:
            return token
    path = args.data_dir / admin_token.FILE_NAME
    if not required and not os.path.exists(path):
        return None
    try:
        return admin_token.read(path)
    except admin_token.AdminTokenError as err:
        raise CommandError(
            f"{err}; set $KEYSVC_TOKEN (or $KEYSVC_ADMIN_TOKEN), or run where the server's"
            " data directory is (--data-dir)"
        ) from err


def _connection(args: argparse.Namespace, *, admin: bool) -> Connection:
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    return Connection(
        args.target,
        token=_token(args, required=admin and args.tls_cert is None),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        credentials=grpc.ssl_channel_credentials() if args.tls and files == (None,) * 3 else None,
    )


def admin_connection(args: argparse.Namespace) -> Connection:
    """The Connection of the options add_connection_options added, with the admin credential
    the admin commands use; CommandError when there is none (and no client certificate)."""
    return _connection(args, admin=True)


def _client(args: argparse.Namespace, *, admin: bool = True) -> KeyServiceClient:
    """A client of --target; `admin` commands fail here when there is no credential at all
    (a client certificate may be one: then the server decides)."""
    return KeyServiceClient(_connection(args, admin=admin), timeout=args.timeout)


@_reported
def _health(args: argparse.Namespace) -> int:
    """The standard gRPC health service's answer: exit 0 when SERVING, 1 otherwise, 2 when the
    server cannot be asked (a container's HEALTHCHECK, a load balancer's probe)."""
    credentials, options = channel_security(_connection(args, admin=False))
    if credentials is None:
        channel = grpc.insecure_channel(args.target, options=options)
    else:
        channel = grpc.secure_channel(args.target, credentials, options=options)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as err:
            raise CommandError(f"cannot ask {args.target}: {err.code().name}") from err
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_DENIED


def _time(stamp: Timestamp, unset: str) -> str:
    if not stamp.seconds and not stamp.nanos:
        return unset
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def _mode(value: keysvc_pb2.Mode.ValueType) -> str:
    return keysvc_pb2.Mode.Name(value).removeprefix("MODE_").lower()


EXPIRING = "expiring"


def _status(key: keysvc_pb2.Key) -> str:
    """active, expiring (active, with an expire_time), expired or revoked."""
    if key.status == keysvc_pb2.KEY_STATUS_ACTIVE and key.HasField("expire_time"):
        return EXPIRING
    return keysvc_pb2.KeyStatus.Name(key.status).removeprefix("KEY_STATUS_").lower()


def _ips(key: keysvc_pb2.Key) -> str:
    return ",".join(key.allowed_ips) or "any"


KEY_COLUMNS = (
    "ID",
    "NAME",
    "PREFIX",
    "MODE",
    "SCOPES",
    "LAST USED",
    "CREATED",
    "EXPIRES",
    "STATUS",
    "REVOKED",
)
# One key shown alone (get, revoke, update) has room for these too.
KEY_DETAIL_COLUMNS = (*KEY_COLUMNS, "ALLOWED IPS", "REASON")


def _key_row(key: keysvc_pb2.Key) -> tuple[str, ...]:
    return (
        key.id,
        key.name,
        key.prefix,
        _mode(key.mode),
        ",".join(key.scopes),
        _time(key.last_used_at, "never"),
        _time(key.created_at, "-"),
        _time(key.expire_time, "never"),
        _status(key),
        _time(key.revoked_at, "-"),
    )


def _key_detail_row(key: keysvc_pb2.Key) -> tuple[str, ...]:
    return (*_key_row(key), _ips(key), key.revocation_reason or "-")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(message: object) -> None:
    print(json.dumps(message, indent=2))


def _as_dict(message: Message) -> dict[str, object]:
    # Every field, false and empty ones included, so scripts can read "allowed" always.
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _scopes(values: Sequence[str]) -> list[str]:
    """--scope values, each one scope or a comma-separated list."""
    return [s for value in values for s in value.split(",") if s]


def _print_secret(secret: str) -> None:
    print()
    print(f"    {secret}")
    print()
    print(STORE_IT_NOW)


def _print_limits(key: keysvc_pb2.Key) -> None:
    """The key's expiry and allowed addresses, when it has them."""
    if key.HasField("expire_time"):
        print(f"Expires {_time(key.expire_time, 'never')}.")
    if key.allowed_ips:
        print(f"Allowed only from {', '.join(key.allowed_ips)}.")


@_reported
def _create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        created = client.create_key(
            args.account,
            args.name,
            args.mode,
            _scopes(args.scope),
            expire_time=args.expires,
            allowed_ips=args.allow_ip,
        )
    if args.json:
        _print_json(_as_dict(created))
        return 0
    key = created.key
    print(
        f"Created {_mode(key.mode)} key {key.id} ({key.name}) with scopes {', '.join(key.scopes)}"
    )
    _print_limits(key)
    _print_secret(created.secret)
    return 0


@_reported
def _roll(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rolled = client.roll_key(args.account, args.id, grace=args.grace)
    if args.json:
        _print_json(_as_dict(rolled))
        return 0
    old, new = rolled.rolled, rolled.key
    print(
        f"Rolled key {old.id} ({old.name}): new {_mode(new.mode)} key {new.id}"
        f" with scopes {', '.join(new.scopes)}"
    )
    _print_limits(new)
    if old.status == keysvc_pb2.KEY_STATUS_ACTIVE and old.HasField("expire_time"):
        print(f"The old key {old.id} keeps working until {_time(old.expire_time, '-')}.")
    else:
        print(f"The old key {old.id} is {_status(old)}.")
    _print_secret(rolled.secret)
    return 0


@_reported
def _update(args: argparse.Namespace) -> int:
    # --any-ip and --allow-ip, --never-expires and --expires exclude each other (argparse).
    allowed_ips: list[str] | None = [] if args.any_ip else args.allow_ip
    expire_time: datetime | Unset | None = UNSET if args.expires is None else args.expires
    if args.never_expires:
        expire_time = None
    if (args.name, args.scope, allowed_ips, expire_time) == (None, None, None, UNSET):
        raise CommandError(
            "keys update: nothing to change: give --name, --scope, --allow-ip, --any-ip,"
            " --expires or --never-expires"
        )
    with _client(args) as client:
        updated = client.update_key(
            args.account,
            args.id,
            name=args.name,
            scopes=None if args.scope is None else _scopes(args.scope),
            allowed_ips=allowed_ips,
            expire_time=expire_time,
        )
    _show_key(updated, args.json)
    return 0


@_reported
def _list(args: argparse.Namespace) -> int:
    # "expiring" is not a status of the contract: it is an active key with an expire_time.
    status = "active" if args.status == EXPIRING else args.status
    with _client(args) as client:
        keys = [
            key
            for key in client.iter_keys(
                args.account, mode=args.mode, status=status, page_size=args.page_size
            )
            if args.status != EXPIRING or key.HasField("expire_time")
        ]
    if args.json:
        _print_json([_as_dict(key) for key in keys])
    elif keys:
        _print_table(KEY_COLUMNS, [_key_row(key) for key in keys])
    else:
        print(f"No keys in account {args.account}.")
    return 0


def _show_key(key: keysvc_pb2.Key, as_json: bool) -> None:
    if as_json:
        _print_json(_as_dict(key))
    else:
        _print_table(KEY_DETAIL_COLUMNS, [_key_detail_row(key)])


@_reported
def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show_key(client.get_key(args.account, args.id), args.json)
    return 0


@_reported
def _revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show_key(client.revoke_key(args.account, args.id, reason=args.reason), args.json)
    return 0


LEAK_COLUMNS = ("LINE", "PREFIX", "OUTCOME", "KEY ID", "ACCOUNT")


def _read_leaked_keys() -> list[tuple[int, str]]:
    """The keys on standard input, one a line, with their line numbers; blank lines skipped."""
    if sys.stdin.isatty():
        print("Reading raw keys from standard input, one a line; end with Ctrl-D.", file=sys.stderr)
    return [
        (number, line.strip())
        for number, line in enumerate(sys.stdin.read().splitlines(), start=1)
        if line.strip()
    ]


def _batches(items: Sequence[tuple[int, str]], size: int) -> Iterator[Sequence[tuple[int, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@_reported
def _revoke_leaked(args: argparse.Namespace) -> int:
    lines = _read_leaked_keys()
    if not lines:
        raise CommandError("keys revoke-leaked: no keys on standard input: give them one a line")
    results: list[tuple[int, keysvc_pb2.LeakedKey]] = []
    with _client(args) as client:
        for batch in _batches(lines, LEAKED_KEYS_PER_CALL):
            response = client.revoke_leaked_keys([key for _, key in batch], source=args.source)
            numbers = [number for number, _ in batch]
            results += zip(numbers, response.results, strict=True)
    if args.json:
        _print_json([{"line": number, **_as_dict(result)} for number, result in results])
        return 0
    _print_table(
        LEAK_COLUMNS,
        [
            (
                str(number),
                result.prefix or "-",
                keysvc_pb2.LeakOutcome.Name(result.outcome).removeprefix("LEAK_OUTCOME_").lower(),
                result.key_id or "-",
                result.account_id or "-",
            )
            for number, result in results
        ],
    )
    return 0


@_reported
def _authorize(args: argparse.Namespace) -> int:
    api_key = args.key if args.key is not None else sys.stdin.readline().strip()
    scopes = _scopes(args.scope)
    with _client(args, admin=False) as client:
        decision = client.authorize(api_key, scopes, args.mode, client_ip=args.client_ip)
    if args.json:
        _print_json(_as_dict(decision))
    else:
        reason = keysvc_pb2.Reason.Name(decision.reason).removeprefix("REASON_")
        line = f"{decision.http_status} {reason}"
        if decision.key_id:
            line += (
                f"  key={decision.key_id} account={decision.account_id}"
                f" mode={_mode(decision.mode)} scopes={','.join(decision.scopes)}"
            )
        if decision.missing_scopes:
            line += f" missing={','.join(decision.missing_scopes)}"
        print(line)
    return 0 if decision.allowed else EXIT_DENIED


@_reported
def _scopes_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        scopes = client.list_scopes()
    if args.json:
        _print_json([_as_dict(scope) for scope in scopes])
    else:
        _print_table(("SCOPE", "GRANTS"), [(s.name, s.description) for s in scopes])
    return 0


AUDIT_COLUMNS = ("TIME", "ACTION", "KEY ID", "ACTOR", "PEER")


def _changes(event: keysvc_pb2.AuditEvent) -> str:
    return "; ".join(
        f"{change.field}: {change.before or '-'} -> {change.after or '-'}"
        for change in event.changes
    )


# Shown only when an event of the listing has them: (column, the event's value).
AUDIT_DETAILS: tuple[tuple[str, Callable[[keysvc_pb2.AuditEvent], str]], ...] = (
    ("RELATED KEY", lambda event: event.related_key_id),
    ("REASON", lambda event: event.reason),
    ("CHANGES", _changes),
)


def _audit_row(event: keysvc_pb2.AuditEvent) -> tuple[str, ...]:
    action = keysvc_pb2.AuditAction.Name(event.action).removeprefix("AUDIT_ACTION_").lower()
    return (_time(event.occurred_at, "-"), action, event.key_id, event.actor, event.peer)


def _print_audit(events: Sequence[keysvc_pb2.AuditEvent]) -> None:
    details = [(name, value) for name, value in AUDIT_DETAILS if any(map(value, events))]
    _print_table(
        (*AUDIT_COLUMNS, *(name for name, _ in details)),
        [(*_audit_row(event), *(value(event) or "-" for _, value in details)) for event in events],
    )


@_reported
def _audit_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        events = list(client.iter_audit_events(args.account, page_size=args.page_size))
    if args.json:
        _print_json([_as_dict(event) for event in events])
    elif events:
        _print_audit(events)
    else:
        print(f"No audit events in account {args.account}.")
    return 0


def _expiry(text: str) -> datetime:
    """--expires WHEN: a duration from now or an RFC 3339 time (argparse names the flag)."""
    try:
        return when.parse_expiry(text, datetime.now(UTC))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _grace(text: str) -> timedelta:
    try:
        return when.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}; 0 revokes the old key at once") from None


def _address(text: str) -> str:
    """--allow-ip: an IPv4 or IPv6 address or CIDR range, passed on as written."""
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an IP address or CIDR range such as 203.0.113.7, 10.0.0.0/8 or"
            f" 2001:db8::/32, got {text!r}"
        ) from None
    return text.strip()


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", required=True, help="account id")
    parser.add_argument("id", help="key id (the ID column of `keysvc keys list`)")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, get, roll, update and revoke keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--account", required=True, help="account id")
    create.add_argument("--name", required=True, help="a label, e.g. 'Production server'")
    create.add_argument("--mode", required=True, choices=("live", "test"))
    create.add_argument(
        "--scope",
        "--scopes",
        action="append",
        required=True,
        help="a scope to grant; repeat or separate with commas (see `keysvc scopes`)",
    )
    create.add_argument(
        "--expires",
        metavar="WHEN",
        type=_expiry,
        help=f"when the key stops working: a duration from now ({when.DURATION_EXAMPLES}) or"
        f" an RFC 3339 time ({when.TIME_EXAMPLE}); default never",
    )
    create.add_argument(
        "--allow-ip",
        metavar="CIDR",
        action="append",
        type=_address,
        default=[],
        help="an address or CIDR range the key may be used from; repeat for more;"
        " default any address",
    )
    create.set_defaults(run=_create)

    listing = key_commands.add_parser("list", help="list an account's keys, newest first")
    listing.add_argument("--account", required=True, help="account id")
    listing.add_argument("--mode", choices=("live", "test"))
    listing.add_argument(
        "--status",
        choices=("active", EXPIRING, "expired", "revoked"),
        help="active keys include the expiring ones (active, with an expiry)",
    )
    listing.add_argument("--page-size", type=int, default=100, help="keys fetched per call")
    listing.set_defaults(run=_list)

    get = key_commands.add_parser("get", help="show one key")
    _add_key_arguments(get)
    get.set_defaults(run=_get)

    roll = key_commands.add_parser(
        "roll",
        help="replace a key with a new one, printing its secret once; the old key keeps"
        " working for --grace",
    )
    _add_key_arguments(roll)
    roll.add_argument(
        "--grace",
        required=True,
        type=_grace,
        help=f"how long the old key keeps working ({when.DURATION_EXAMPLES}; at most 7d);"
        " 0 revokes it at once",
    )
    roll.set_defaults(run=_roll)

    update = key_commands.add_parser(
        "update", help="change a key's name, scopes, allowed addresses or expiry"
    )
    _add_key_arguments(update)
    update.add_argument("--name", help="the new label")
    update.add_argument(
        "--scope",
        "--scopes",
        action="append",
        help="replaces the scopes the key holds (give them all); repeat or separate with commas",
    )
    ips = update.add_mutually_exclusive_group()
    ips.add_argument(
        "--allow-ip",
        metavar="CIDR",
        action="append",
        type=_address,
        help="replaces the addresses or CIDR ranges the key may be used from (give them all);"
        " repeat for more",
    )
    ips.add_argument("--any-ip", action="store_true", help="let the key be used from any address")
    expiry = update.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires",
        metavar="WHEN",
        type=_expiry,
        help=f"a new expiry: a duration from now ({when.DURATION_EXAMPLES}) or an RFC 3339 time",
    )
    expiry.add_argument("--never-expires", action="store_true", help="remove the key's expiry")
    update.set_defaults(run=_update)

    revoke = key_commands.add_parser("revoke", help="revoke a key, for good")
    _add_key_arguments(revoke)
    revoke.add_argument(
        "--reason",
        default="",
        help="why, kept with the key and in the audit trail: compromised, unused, or free text",
    )
    revoke.set_defaults(run=_revoke)

    leaked = key_commands.add_parser(
        "revoke-leaked",
        help="revoke raw keys found in the open, read from standard input one a line, in any"
        " account",
    )
    leaked.add_argument(
        "--source", default="", help="where they were found (a URL or a description)"
    )
    leaked.set_defaults(run=_revoke_leaked)

    audit = commands.add_parser(
        "audit", help="who created, rolled, updated and revoked keys, when, from where"
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    audit_list = audit_commands.add_parser(
        "list", help="an account's key creations, rolls, updates and revocations, newest first"
    )
    audit_list.add_argument("--account", required=True, help="account id")
    audit_list.add_argument("--page-size", type=int, default=100, help="events fetched per call")
    audit_list.set_defaults(run=_audit_list)

    authorize = commands.add_parser(
        "authorize", help="ask keysvc whether a key may make a request (exit 0 if allowed)"
    )
    authorize.add_argument(
        "key", nargs="?", help="the raw key or 'Bearer ...'; read from stdin when omitted"
    )
    authorize.add_argument("--scope", action="append", default=[], help="a required scope")
    authorize.add_argument("--mode", choices=("live", "test"), help="the mode required")
    authorize.add_argument(
        "--client-ip",
        default="",
        metavar="ADDRESS",
        help="the address the request came from, for keys restricted to allowed IPs",
    )
    authorize.set_defaults(run=_authorize)

    scopes = commands.add_parser("scopes", help="list the scopes keys can be granted")
    scopes.set_defaults(run=_scopes_command)

    health = commands.add_parser(
        "health", help="ask the gRPC health service whether keysvc serves (exit 0 if it does)"
    )
    health.add_argument(
        "--service", default="", help="the service to ask about; empty: the whole server"
    )
    health.set_defaults(run=_health)

    for parser in (
        *key_commands.choices.values(),
        audit_list,
        authorize,
        scopes,
        health,
    ):
        if not any(a.dest == "target" for a in parser._actions):
            add_client_options(parser)
