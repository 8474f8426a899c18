"""How long the `seglab` command takes to answer `--help` and `models` (issue 18: under a
second), each run as a fresh process the way a user types it; median and worst of N runs.

    .venv/bin/python benchmarks/cli_latency.py [--repeats 10] [--write]

--write replaces the "Command start-up" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402

HEADING = "## Command start-up"
COMMANDS = (["--help"], ["models"], ["models", "-v"], ["data", "--help"])


def seglab_command() -> list[str]:
    found = shutil.which("seglab", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "seglab"]


def time_command(arguments: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*seglab_command(), *arguments], capture_output=True, check=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = ["| command | median s | worst s |", "|---|---|---|"]
    for arguments in COMMANDS:
        seconds = time_command(arguments, args.repeats)
        rows.append(
            f"| `seglab {' '.join(arguments)}` | {statistics.median(seconds):.2f} "
            f"| {max(seconds):.2f} |"
        )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    section = "\n".join(
        [
            HEADING,
            "",
            f"`python benchmarks/cli_latency.py --repeats {args.repeats}`: each command a fresh "
            f"process; {os.cpu_count()} cores, load average {load}, Python "
            f"{platform.python_version()}. `seglab models -v` imports torch and every model "
            "(it prints each class signature); the others do not.",
            "",
            *rows,
        ]
    )
    print(section)
    if args.write:
        write_section(HEADING, section)


if __name__ == "__main__":
    main()
