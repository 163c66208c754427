"""The `keysvc` command: serve, migrate, and the admin commands that talk to a running server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from keysvc.cli import admin, callers
from keysvc.core.errors import StartupError
from keysvc.runtime import config


def _serve(args: argparse.Namespace) -> int:
    from keysvc.runtime import server

    settings = config.settings_from(args)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(server.serve(settings, address_file=args.address_file))
    except StartupError as err:
        print(f"keysvc: {err}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from keysvc.runtime.build import open_database

    settings = config.settings_from(args)
    try:
        engine = open_database(settings)
    except StartupError as err:
        print(f"keysvc: {err}", file=sys.stderr)
        return 1
    engine.dispose()
    print("database schema is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keysvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    config.add_options(serve, config.SERVE_OPTIONS)
    serve.add_argument(
        "--address-file",
        type=Path,
        help="once listening, write the address (HOST:PORT) to this file, for process managers"
        " and tests that start keysvc on port 0",
    )
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="bring the database to the latest schema")
    config.add_options(migrate, config.MIGRATE_OPTIONS)
    migrate.set_defaults(run=_migrate)

    admin.add_commands(commands)
    callers.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        # Output piped into `head` ends quietly, as other command-line tools do. Never for
        # the server: a peer or a log reader going away must not kill it.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # These work locally; the others talk to a server and share its error handling.
    if args.command in ("serve", "migrate", "callers"):
        status: int = args.run(args)
        return status
    return admin.run(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
