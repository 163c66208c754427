"""`keysvc dashboard serve` and `keysvc dashboard users add|list|remove`.

They join the `keysvc` command through the `keysvc.commands` entry point, as the server's
commands do. What serving needs (Starlette, Jinja2, uvicorn) is imported only by `serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path

from keysvc_client.cli import admin

__all__ = ["add_commands"]

EXIT_FAILED = 2
DEFAULT_LISTEN = "127.0.0.1:8080"
MIN_PASSWORD_LENGTH = 8


class _Refused(Exception):
    """The command cannot do what was asked; the message says why."""


def _fail(message: str) -> int:
    print(f"keysvc: {message}", file=sys.stderr)
    return EXIT_FAILED


def _serve(args: argparse.Namespace) -> int:
    from keysvc.dashboard import server

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        connection = admin.admin_connection(args)
    except (admin.CommandError, ValueError) as err:
        return _fail(f"dashboard serve: {err}")
    settings = server.DashboardSettings(
        listen=args.listen,
        users_file=args.users,
        session_key_file=args.session_key_file
        or args.users.with_name(args.users.name + ".session-key"),
        connection=connection,
        timeout=args.timeout,
        https_cert=args.https_cert,
        https_key=args.https_key,
        insecure=args.insecure,
        address_file=args.address_file,
    )
    try:
        asyncio.run(server.serve(settings))
    except server.StartupError as err:
        print(f"keysvc: dashboard: {err}", file=sys.stderr)
        return 1
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise _Refused("the two passwords differ; nothing changed")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise _Refused(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    return password


def _users_add(args: argparse.Namespace) -> int:
    from keysvc.dashboard import users

    try:
        users.check_name(args.name)
        accounts = tuple(dict.fromkeys(users.check_account(a) for a in args.account or ()))
        existing = users.load(args.users) if args.users.exists() else {}
        if args.name in existing and not args.replace:
            raise _Refused(
                f"user {args.name} is already in {args.users}: give --replace to give them a new"
                " password and accounts"
            )
        password = _read_password(args)
    except (ValueError, users.UsersFileError, _Refused) as err:
        return _fail(f"dashboard users add: {err}")
    user = users.User(
        args.name, users.hash_password(password), accounts, all_accounts=args.all_accounts
    )
    try:
        users.save(args.users, {**existing, user.name: user})
    except (OSError, users.UsersFileError) as err:
        return _fail(f"dashboard users add: cannot write {args.users}: {err}")
    what = "every account" if user.all_accounts else "accounts " + ", ".join(user.accounts)
    verb = "Replaced" if args.name in existing else "Added"
    print(f"{verb} user {user.name} ({what}) in {args.users}.")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    from keysvc.dashboard import users

    try:
        found = users.load(args.users)
    except users.UsersFileError as err:
        return _fail(f"dashboard users list: {err}")
    if not found:
        print(f"No users in {args.users}.")
        return 0
    rows = [
        (user.name, "all" if user.all_accounts else ",".join(user.accounts) or "-")
        for user in sorted(found.values(), key=lambda u: u.name)
    ]
    width = max(len("NAME"), *(len(name) for name, _ in rows))
    print(f"{'NAME'.ljust(width)}  ACCOUNTS")
    for name, accounts in rows:
        print(f"{name.ljust(width)}  {accounts}")
    return 0


def _users_remove(args: argparse.Namespace) -> int:
    from keysvc.dashboard import users

    try:
        found = users.load(args.users)
        if args.name not in found:
            raise _Refused(f"no user {args.name} in {args.users}")
        users.save(args.users, {name: u for name, u in found.items() if name != args.name})
    except (users.UsersFileError, _Refused, OSError) as err:
        return _fail(f"dashboard users remove: {err}")
    print(f"Removed user {args.name} from {args.users}; their sessions end at once.")
    return 0


def _users_option(parser: argparse.ArgumentParser) -> None:
    value = os.environ.get("KEYSVC_DASHBOARD_USERS")
    parser.add_argument(
        "--users",
        type=Path,
        required=value is None,
        default=Path(value) if value else None,
        metavar="FILE",
        help="the dashboard's users file (TOML, mode 0600) ($KEYSVC_DASHBOARD_USERS)",
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `dashboard serve` and `dashboard users ...` to the `keysvc` command."""
    dashboard = commands.add_parser(
        "dashboard", help="the web dashboard: serve it, and manage who may sign in"
    )
    subcommands = dashboard.add_subparsers(
        dest="dashboard_command", required=True, metavar="COMMAND"
    )

    serve = subcommands.add_parser(
        "serve", help="serve the dashboard, calling keysvc as an admin for its signed-in users"
    )
    serve.add_argument(
        "--listen",
        default=os.environ.get("KEYSVC_DASHBOARD_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"where to serve the pages ($KEYSVC_DASHBOARD_LISTEN, default {DEFAULT_LISTEN});"
        " beyond loopback, with --https-cert and --https-key or --insecure; port 0: any",
    )
    _users_option(serve)
    serve.add_argument(
        "--session-key-file",
        type=Path,
        metavar="FILE",
        help="the key that signs session cookies, generated there (mode 0600) when missing;"
        " default: the users file's name plus .session-key",
    )
    serve.add_argument(
        "--https-cert", type=Path, metavar="PEM", help="the dashboard's own certificate, for HTTPS"
    )
    serve.add_argument("--https-key", type=Path, metavar="PEM", help="the key of --https-cert")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve plain HTTP beyond loopback (behind something that terminates TLS)",
    )
    serve.add_argument(
        "--address-file",
        type=Path,
        metavar="FILE",
        help="once listening, write the dashboard's URL (http[s]://HOST:PORT) to this file",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    # keysvc's address, the admin credential and TLS, exactly as the admin commands take them.
    admin.add_connection_options(serve)
    serve.set_defaults(run=_serve, ignores_sigpipe=True)

    users = subcommands.add_parser("users", help="who may sign in to the dashboard")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")

    add = user_commands.add_parser(
        "add", help="add a user (prompts for the password twice, or --password-stdin)"
    )
    add.add_argument("name", help="1 to 64 letters, digits, '.', '_', '@' or '-'")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--account", action="append", metavar="ACCOUNT", help="an account they may open; repeat"
    )
    which.add_argument("--all-accounts", action="store_true", help="they may open any account")
    _users_option(add)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument(
        "--replace", action="store_true", help="replace the user's password and accounts"
    )
    add.set_defaults(run=_users_add)

    listing = user_commands.add_parser("list", help="the users and their accounts")
    _users_option(listing)
    listing.set_defaults(run=_users_list)

    remove = user_commands.add_parser("remove", help="remove a user; their sessions end")
    remove.add_argument("name")
    _users_option(remove)
    remove.set_defaults(run=_users_remove)
