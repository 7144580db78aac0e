"""`make demo` is part of the test suite: the story must run from start to end and say so."""

from __future__ import annotations

import subprocess
import sys

from tests.components import REPO


def test_demo_runs_end_to_end_and_passes_every_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.demo"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "checks passed" in proc.stdout and "FAILED" not in proc.stdout
    for heading in ("kubectl apply a deny-all NetworkPolicy", "Delete the policies: traffic restored, rules gone"):
        assert heading in proc.stdout
