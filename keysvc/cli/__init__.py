"""The server's commands of `keysvc`: serve, migrate, and callers new-token (and, from
keysvc.dashboard, `keysvc dashboard`).

The `keysvc` command itself is keysvc-client's, with the admin commands, which need no server
code; these join it through this package's `keysvc.commands` entry point (add_commands).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from keysvc_client import cli as client_cli

from keysvc.cli import callers
from keysvc.core.errors import StartupError
from keysvc.dashboard import cli as dashboard_cli
from keysvc.runtime import config


def _serve(args: argparse.Namespace) -> int:
    from keysvc.runtime import server, supervisor

    settings = config.settings_from(args)
    # The workers of --workers write to one stream: each line says whose it is.
    worker = "" if args.worker_of is None else f"[worker {args.worker_number} pid %(process)d] "
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.worker_of is not None:
            supervisor.run_worker(settings, supervisor_pid=args.worker_of)
        elif settings.workers > 1:
            return supervisor.supervise(settings, address_file=args.address_file)
        else:
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


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds serve, migrate and callers to the `keysvc` command's subcommands."""
    serve = commands.add_parser("serve", help="run the gRPC server")
    config.add_options(serve, config.SERVE_OPTIONS)
    serve.add_argument(
        "--address-file",
        type=Path,
        help="once listening, write the address (HOST:PORT) to this file, for process managers"
        " and tests that start keysvc on port 0; with --http-listen, the HTTP listener's URL"
        " on a second line",
    )
    # Internal: how a supervisor (--workers, keysvc.runtime.supervisor) starts its workers.
    serve.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    serve.add_argument("--worker-number", type=int, default=1, help=argparse.SUPPRESS)
    # A peer or a log reader going away must not kill the server.
    serve.set_defaults(run=_serve, ignores_sigpipe=True)

    migrate = commands.add_parser("migrate", help="bring the database to the latest schema")
    config.add_options(migrate, config.MIGRATE_OPTIONS)
    migrate.set_defaults(run=_migrate)

    callers.add_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m keysvc`: the `keysvc` command, with these commands even where this package's
    entry point is not installed (a source tree on PYTHONPATH)."""
    return client_cli.main(argv, commands=[add_commands, dashboard_cli.add_commands])


if __name__ == "__main__":
    sys.exit(main())
