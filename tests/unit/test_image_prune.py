"""The product image cache's prune keeps what a parallel checkout built recently (pure file operations)."""

from __future__ import annotations

import os
from pathlib import Path

from localcluster.image import PRUNE_GRACE_SECONDS, _prune


def _touch(path: Path, mtime: float, directory: bool = False) -> Path:
    if directory:
        path.mkdir(parents=True)
    else:
        path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_prune_drops_only_old_unreferenced_entries(tmp_path: Path) -> None:
    now = 1_000_000.0
    old = now - PRUNE_GRACE_SECONDS - 1
    recent = now - 10
    (tmp_path / "steps").mkdir()
    current = _touch(tmp_path / "nodeport-guard-current.tar", old)
    stale_image = _touch(tmp_path / "nodeport-guard-stale.tar", old)
    parallel_image = _touch(tmp_path / "nodeport-guard-parallel.tar", recent)
    used_step = _touch(tmp_path / "steps" / "used", old, directory=True)
    stale_step = _touch(tmp_path / "steps" / "stale", old, directory=True)
    parallel_step = _touch(tmp_path / "steps" / "parallel", recent, directory=True)

    _prune(tmp_path, current, {"used"}, now=now)

    assert current.exists() and used_step.exists()
    assert parallel_image.exists() and parallel_step.exists()
    assert not stale_image.exists() and not stale_step.exists()
