"""benchmarks/RESULTS.md: each benchmark script owns one `## ` section and rewrites only it."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(heading: str, section: str, path: Path = RESULTS) -> None:
    """Replace the section that starts with the line `heading` (up to the next `## ` line), or
    append it; the other sections stay as they are, one blank line apart. `section` starts
    with its heading. Written to a temporary file and renamed, so a crash leaves the old file.
    """
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    section = section.rstrip("\n") + "\n"
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
        new = "".join(lines[:start]) + section
        if end is not None:
            new += "\n" + "".join(lines[end:])
    partial = path.with_suffix(".md.partial")
    partial.write_text(new)
    os.replace(partial, path)
