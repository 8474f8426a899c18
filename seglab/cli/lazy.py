"""Sub-commands whose arguments are declared only when the command is chosen.

`seglab --help` lists every command's one-line help; the arguments of `seglab eval` (whose
--crf choices come from seglab.crf, which imports torch) are declared only when eval runs or
`seglab eval --help` is asked for.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class LazyCommands(argparse._SubParsersAction):
    """add_subparsers' action, plus `add_lazy(name, help, declare)`.

    `declare(parser)` adds the command's arguments and its `func` default; it runs once, when
    argparse dispatches to the command. Plain `add_parser` works as before.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._declare: dict[str, tuple[argparse.ArgumentParser, Callable]] = {}

    def add_lazy(
        self, name: str, help: str, declare: Callable[[argparse.ArgumentParser], None]
    ) -> argparse.ArgumentParser:
        parser = self.add_parser(name, help=help, description=help)
        self._declare[name] = (parser, declare)
        return parser

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        pending = self._declare.pop(values[0], None) if values else None
        if pending is not None:
            subparser, declare = pending
            subparser.register("action", "parsers", LazyCommands)  # nested tools: lazy too
            declare(subparser)
        super().__call__(parser, namespace, values, option_string)
