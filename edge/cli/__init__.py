"""``python -m edge <command>``: registers each command module's ``add_parser``.

Each command lives in its own module exposing ``add_parser(subparsers)``,
which adds its sub-parser and sets ``func`` (called with the parsed args,
returning the exit status). Add a command by adding its module to COMMANDS.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge", description="dawnchorus on-device tools")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
