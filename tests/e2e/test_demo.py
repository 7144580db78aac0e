"""`make demo` is part of the test suite: the story must run from start to end and say so, from a
clone with nothing beside it (a user's clone has no ../shared)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.components import REPO


def _lone_clone(into: Path) -> Path:
    """The repository's files (tracked, and new ones not ignored) copied with their times kept, and
    this run's venv linked in (make's install step then sees it as done); nothing beside it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    clone = into / "nodeport-guard"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    os.symlink(REPO / ".venv", clone / ".venv")
    return clone


def test_demo_runs_end_to_end_from_a_lone_clone_and_passes_every_check(tmp_path: Path) -> None:
    clone = _lone_clone(tmp_path)
    assert not (clone.parent / "shared").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=clone, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "checks passed" in proc.stdout and "FAILED" not in proc.stdout
    for heading in ("kubectl apply a deny-all NetworkPolicy", "Delete the policies: traffic restored, rules gone",
                    "A scenario proven by the test suite's packet oracle"):
        assert heading in proc.stdout
