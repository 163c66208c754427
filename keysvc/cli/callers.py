"""`keysvc callers new-token`: a token for a new caller, and its entry for the callers file.

keysvc keeps only a token's SHA-256, so the token is printed here once and never again.
The entry goes to standard output and the token to the terminal (standard error), so
`keysvc callers new-token ... >> callers.toml` appends the entry and nothing secret.
"""

from __future__ import annotations

import argparse
import json
import sys

from keysvc.access import callers
from keysvc.access.callers import CallersError, Role

EXIT_FAILED = 2


def _new_token(args: argparse.Namespace) -> int:
    role = Role(args.role)
    token = callers.new_token()
    try:
        entry = callers.entry_toml(args.name, role, token)
    except CallersError as err:
        print(f"keysvc: --name: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        digest = callers.token_digest(token).hex()
        document = {"name": args.name, "role": role.value, "token": token, "token_sha256": digest}
        print(json.dumps(document, indent=2))
        return 0
    print(
        f"New {role.value} token for {args.name}:\n\n    {token}\n\n"
        "Store this token now: it is shown this once; keysvc keeps only its SHA-256.\n"
        "Add this entry to the callers file (--callers) and restart keysvc"
        " (it is standard output: `>> callers.toml` appends it):\n",
        file=sys.stderr,
        flush=True,
    )
    print(entry, end="")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("callers", help="manage who may call keysvc (the callers file)")
    caller_commands = group.add_subparsers(dest="callers_command", required=True, metavar="COMMAND")

    new_token = caller_commands.add_parser(
        "new-token", help="print a new caller's token once, and its entry for the callers file"
    )
    new_token.add_argument("--name", required=True, help="the caller's name, e.g. api-eu-1")
    new_token.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="admin: every RPC; authorizer: Authorize only",
    )
    new_token.add_argument(
        "--json", action="store_true", help="print name, role, token and token_sha256 as JSON"
    )
    new_token.set_defaults(run=_new_token)
