"""``python -m edge <command>``: registers each command module's ``add_parser``.

Each command lives in its own module exposing ``add_parser(subparsers)``,
which adds its sub-parser and sets ``func`` (called with the parsed args,
returning the exit status). Add a command by adding its module to COMMANDS.
A command's name is its module's with ``-`` for ``_`` (``export_reviews`` ->
``export-reviews``). When the command line names one, only that module is
imported: a command pays for its own imports only (``web`` stays without
numpy, and so within its memory budget).

Imports from edge: anything (the commands are thin layers over the runtime).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "edge.cli.replay",
    "edge.cli.run",
    "edge.cli.checkconfig",
    "edge.cli.devices",
    "edge.cli.web",
    "edge.cli.export_reviews",
]


def command_name(module: str) -> str:
    return module.rsplit(".", 1)[1].replace("_", "-")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with the one named ``only`` (if it is one)."""
    parser = argparse.ArgumentParser(prog="python -m edge", description="dawnchorus on-device tools")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m for m in COMMANDS if command_name(m) == only] or COMMANDS
    for name in names:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in args_in if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
