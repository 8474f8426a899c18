"""Files that never exist half-written: every file seglab writes goes through these.

Each writer writes to a temporary name in the target's folder (`.NAME.XXXXXXXX.tmp`), flushes
it to disk, then renames it over the target: a kill at any moment leaves the old file or the
new one, never a mix, and at most a temporary file that `remove_temporaries` recognises.
The two logs a run appends to (metrics.jsonl, TensorBoard events) are the exception; the
trainer cuts them back to the checkpoint on resume.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMPORARY_PATTERNS = (".*.tmp", ".tmp*")
"""Names of temporary files a killed writer may leave: seglab's own (`.NAME.XXXX.tmp`) and
the `.tmpXXXXXX` of libraries that write through a temporary file of their own (Rust's
tempfile crate, used by older safetensors `save_file`)."""


def write_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(temporary_path), fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_png_atomically(image, path: str | Path) -> None:
    """Save a PIL image as PNG under `path` atomically."""
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a process killed mid-write left in `folder`; returns them."""
    folder = Path(folder)
    stale = sorted(
        {p for pattern in TEMPORARY_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    )
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
