"""`keysvc keys ...`, `keysvc audit list`, `keysvc authorize`, `keysvc scopes`: commands over
the typed client.

They talk to a running server, never to its database, so they need nothing of the server package.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keysvc_client._connection import Connection
from keysvc_client._sync import KeyServiceClient
from keysvc_client._tls import channel_security
from keysvc_client.cli import admin_token
from keysvc_client.errors import KeysvcError
from keysvc_client.v1 import keysvc_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_DENIED = 1
EXIT_FAILED = 2


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
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
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


def _status(value: keysvc_pb2.KeyStatus.ValueType) -> str:
    return keysvc_pb2.KeyStatus.Name(value).removeprefix("KEY_STATUS_").lower()


KEY_COLUMNS = (
    "ID",
    "NAME",
    "PREFIX",
    "MODE",
    "SCOPES",
    "LAST USED",
    "CREATED",
    "STATUS",
    "REVOKED",
)


def _key_row(key: keysvc_pb2.Key) -> tuple[str, ...]:
    return (
        key.id,
        key.name,
        key.prefix,
        _mode(key.mode),
        ",".join(key.scopes),
        _time(key.last_used_at, "never"),
        _time(key.created_at, "-"),
        _status(key.status),
        _time(key.revoked_at, "-"),
    )


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(message: object) -> None:
    print(json.dumps(message, indent=2))


def _as_dict(message: Message) -> object:
    # Every field, false and empty ones included, so scripts can read "allowed" always.
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@_reported
def _create(args: argparse.Namespace) -> int:
    scopes = [s for value in args.scope for s in value.split(",") if s]
    with _client(args) as client:
        created = client.create_key(args.account, args.name, args.mode, scopes)
    if args.json:
        _print_json(_as_dict(created))
        return 0
    key = created.key
    print(
        f"Created {_mode(key.mode)} key {key.id} ({key.name}) with scopes {', '.join(key.scopes)}"
    )
    print()
    print(f"    {created.secret}")
    print()
    print("Store this key now: it is shown this once and can never be retrieved again.")
    return 0


@_reported
def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = list(
            client.iter_keys(
                args.account, mode=args.mode, status=args.status, page_size=args.page_size
            )
        )
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
        _print_table(KEY_COLUMNS, [_key_row(key)])


@_reported
def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show_key(client.get_key(args.account, args.id), args.json)
    return 0


@_reported
def _revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _show_key(client.revoke_key(args.account, args.id), args.json)
    return 0


@_reported
def _authorize(args: argparse.Namespace) -> int:
    api_key = args.key if args.key is not None else sys.stdin.readline().strip()
    scopes = [s for value in args.scope for s in value.split(",") if s]
    with _client(args, admin=False) as client:
        decision = client.authorize(api_key, scopes, args.mode)
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
def _scopes(args: argparse.Namespace) -> int:
    with _client(args) as client:
        scopes = client.list_scopes()
    if args.json:
        _print_json([_as_dict(scope) for scope in scopes])
    else:
        _print_table(("SCOPE", "GRANTS"), [(s.name, s.description) for s in scopes])
    return 0


AUDIT_COLUMNS = ("TIME", "ACTION", "KEY ID", "ACTOR", "PEER")


def _audit_row(event: keysvc_pb2.AuditEvent) -> tuple[str, ...]:
    action = keysvc_pb2.AuditAction.Name(event.action).removeprefix("AUDIT_ACTION_").lower()
    return (_time(event.occurred_at, "-"), action, event.key_id, event.actor, event.peer)


@_reported
def _audit_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        events = list(client.iter_audit_events(args.account, page_size=args.page_size))
    if args.json:
        _print_json([_as_dict(event) for event in events])
    elif events:
        _print_table(AUDIT_COLUMNS, [_audit_row(event) for event in events])
    else:
        print(f"No audit events in account {args.account}.")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, get and revoke keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--account", required=True, help="account id")
    create.add_argument("--name", required=True, help="a label, e.g. 'Production server'")
    create.add_argument("--mode", required=True, choices=("live", "test"))
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope to grant; repeat or separate with commas (see `keysvc scopes`)",
    )
    create.set_defaults(run=_create)

    listing = key_commands.add_parser("list", help="list an account's keys, newest first")
    listing.add_argument("--account", required=True, help="account id")
    listing.add_argument("--mode", choices=("live", "test"))
    listing.add_argument("--status", choices=("active", "revoked"))
    listing.add_argument("--page-size", type=int, default=100, help="keys fetched per call")
    listing.set_defaults(run=_list)

    for name, run, text in (("get", _get, "show one key"), ("revoke", _revoke, "revoke a key")):
        command = key_commands.add_parser(name, help=text)
        command.add_argument("--account", required=True, help="account id")
        command.add_argument("id", help="key id (the ID column of `keysvc keys list`)")
        command.set_defaults(run=run)

    audit = commands.add_parser("audit", help="who created and revoked keys, when, from where")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    audit_list = audit_commands.add_parser(
        "list", help="an account's key creations and revocations, newest first"
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
    authorize.set_defaults(run=_authorize)

    scopes = commands.add_parser("scopes", help="list the scopes keys can be granted")
    scopes.set_defaults(run=_scopes)

    health = commands.add_parser(
        "health", help="ask the gRPC health service whether keysvc serves (exit 0 if it does)"
    )
    health.add_argument(
        "--service", default="", help="the service to ask about; empty: the whole server"
    )
    health.set_defaults(run=_health)

    for parser in (
        create,
        listing,
        *key_commands.choices.values(),
        audit_list,
        authorize,
        scopes,
        health,
    ):
        if not any(a.dest == "target" for a in parser._actions):
            add_client_options(parser)
