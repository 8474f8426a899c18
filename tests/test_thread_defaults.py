"""`import seglab` sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp, unless the user chose.

libgomp reads the variable when torch is loaded; OMP_DISPLAY_ENV=VERBOSE makes it print what
it read, and GOMP_SPINCOUNT is the observable difference: PASSIVE means 0 spins, libgomp's own
default (nothing set) 300000, ACTIVE effectively unbounded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

CHILD = "import os, seglab, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def _run(**env: str) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    clean.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=clean, capture_output=True, text=True, check=True
    )
    spins = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    return done.stdout.strip(), spins.group(1) if spins else "?"


def test_seglab_import_makes_libgomp_threads_sleep_instead_of_spinning():
    assert _run() == ("PASSIVE", "0")


def test_a_users_explicit_policy_is_kept():
    policy, spins = _run(OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE"
    assert int(spins) > 300000  # ACTIVE: libgomp's "spin forever" count, not PASSIVE's 0


def test_seglab_omp_defaults_0_leaves_libgomps_own_default():
    assert _run(SEGLAB_OMP_DEFAULTS="0") == ("None", "300000")
