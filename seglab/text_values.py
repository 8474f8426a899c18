"""Values written as text by a user (a command-line option, an HTTP query parameter) -> Python.

Shared by the CLI (seglab/cli/options.py) and the server (seglab/serve_model.py), so that both
read '512x512' or '0.5,1,1.5' alike. A malformed value is a SeglabError naming the option and
the form it expects: one line for the user. Imports nothing but seglab.errors.
"""

from __future__ import annotations

from seglab.errors import SeglabError

__all__ = ["parse_flag", "parse_numbers", "parse_size"]


def parse_size(text: str, option: str) -> list[int]:
    """'512x1024' -> [512, 1024] (H, W)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        size = [int(part) for part in parts]
    except ValueError:
        size = []
    if len(size) != 2 or min(size) < 1:
        raise SeglabError(f"{option} {text!r}: give a size as HxW in pixels, e.g. 512x512")
    return size


def parse_numbers(text: str, option: str, kind: type = float) -> list:
    """'0.5,0.75,1' -> [0.5, 0.75, 1.0]; every number must be > 0."""
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        example = "0.5,0.75,1" if kind is float else "3,4,5"
        raise SeglabError(f"{option} {text!r}: give comma-separated numbers > 0, e.g. {example}")
    return values


def parse_flag(text: str, option: str) -> bool:
    """'true'/'1'/'yes'/'on' -> True, 'false'/'0'/'no'/'off' -> False (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SeglabError(f"{option} {text!r}: give true or false")
