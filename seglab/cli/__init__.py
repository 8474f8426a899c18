"""The `seglab` command: parses arguments and dispatches to the library; nothing else.

One module per command group (data, models, train, evaluate, predict, deploy, serve) declares
its commands with `add_commands(commands)`. A command's arguments are declared only when that
command runs (`LazyCommands`), so `seglab --help` imports neither torch nor the registries that
the commands' help texts are read from.

A SeglabError (a user's mistake) prints one line and exits with status 2; a command function may
also return 2 itself after printing what went wrong (predict, for the images it could not read).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from seglab.cli.lazy import LazyCommands
from seglab.errors import SeglabError

COMMAND_MODULES = ("train", "evaluate", "predict", "models", "data", "deploy", "serve", "weak")
"""seglab.cli.<name> modules, in the order their commands are listed by --help."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seglab", description="Classic semantic segmentation: train, evaluate, predict."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.register("action", "parsers", LazyCommands)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"seglab.cli.{name}").add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except SeglabError as error:
        print(f"seglab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seglab: interrupted; a training run continues with --resume", file=sys.stderr)
        return 130
    return status or 0


__all__ = ["build_parser", "main"]
