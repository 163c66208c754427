"""The `keysvc` command: serve, migrate, and the admin commands that talk to a running server.

keysvc-client provides the command and its admin commands, which need only a server to talk
to. The server package adds its own commands (`serve`, `migrate`, `callers`) through the
`keysvc.commands` entry-point group: each entry point names a function that takes the
command's subparsers and adds its commands to them, each with a `run(args) -> exit status`
default, and `ignores_sigpipe=True` for a command that must outlive its readers.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import TypeAlias

from keysvc_client.cli import admin

__all__ = ["ENTRY_POINT_GROUP", "AddCommands", "build_parser", "main"]

ENTRY_POINT_GROUP = "keysvc.commands"

# Strings: argparse's action classes are not subscriptable at run time.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommands: TypeAlias = "Callable[[Subcommands], None]"

# The server package's commands, named here so that without it they say what is missing
# instead of argparse's "invalid choice".
SERVER_COMMANDS = {
    "serve": "run the gRPC server",
    "migrate": "bring the database to the latest schema",
    "callers": "manage who may call keysvc (the callers file)",
    "dashboard": "the web dashboard: serve it, and manage who may sign in",
}
EXIT_FAILED = 2


def _installed(given: Iterable[AddCommands]) -> tuple[list[AddCommands], list[str]]:
    """The command providers `given` and installed, each once, and why any failed to load."""
    providers = list(given)
    failures = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            provider = entry_point.load()
        except Exception as err:
            # A broken server install must not take the admin commands down with it.
            failures.append(f"{entry_point.value}: {type(err).__name__}: {err}")
            continue
        if provider not in providers:
            providers.append(provider)
    return providers, failures


def build_parser(commands: Iterable[AddCommands] = ()) -> argparse.ArgumentParser:
    """The `keysvc` parser: `commands` and the installed providers' commands, then the admin
    commands. Without the server package its commands are there, to say it is missing."""
    parser = argparse.ArgumentParser(prog="keysvc", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    providers, failures = _installed(commands)
    for add_commands in providers:
        add_commands(subcommands)
    for name, text in SERVER_COMMANDS.items():
        if name not in subcommands.choices:
            missing = subcommands.add_parser(
                name, help=f"{text}; needs the keysvc server package", add_help=False
            )
            missing.set_defaults(run=_server_missing, load_failures=failures)
    admin.add_commands(subcommands)
    return parser


def _server_missing(args: argparse.Namespace) -> int:
    failures: list[str] = args.load_failures
    if failures:
        why = f"could not be loaded ({'; '.join(failures)}): reinstall it"
    else:
        why = (
            "is not installed: this keysvc has keysvc-client's admin commands only."
            " Install the keysvc package (`pip install .` in its repository) where the server runs"
        )
    print(
        f"keysvc: `keysvc {args.command}` needs the keysvc server package, which {why}.",
        file=sys.stderr,
    )
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None, *, commands: Iterable[AddCommands] = ()) -> int:
    """Runs `keysvc` with `argv` (default: sys.argv); `commands` add to the installed ones."""
    parser = build_parser(commands)
    args, unknown = parser.parse_known_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    if run is _server_missing:
        # Whatever flags the missing command would take, the answer is the same.
        return run(args)
    if unknown:
        # As parse_args() words it.
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "ignores_sigpipe", False):
        # Output piped into `head` ends quietly, as other command-line tools do. Never for
        # the server: a peer or a log reader going away must not kill it.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return run(args)
