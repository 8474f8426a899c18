"""`import seglab` leaves libgomp's wait policy as torch has it (the training loop adapts its
thread count instead, seglab/threads.py), and a user's own policy is what libgomp reads.

libgomp reads the variables when torch is loaded; OMP_DISPLAY_ENV=VERBOSE makes it print what
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


def test_seglab_import_keeps_libgomps_own_spinning_default():
    # PASSIVE (0 spins) cost the idle demo training step 25-30 %: seglab no longer sets it
    assert _run() == ("None", "300000")
    assert _run(SEGLAB_OMP_DEFAULTS="0") == ("None", "300000")


def test_a_users_explicit_policy_is_kept():
    policy, spins = _run(OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE"
    assert int(spins) > 300000  # ACTIVE: libgomp's "spin forever" count
    assert _run(OMP_WAIT_POLICY="PASSIVE") == ("PASSIVE", "0")
