"""An image layer holding the difference between two root filesystems, with OCI whiteouts (I/O)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path


def _signature(st: os.stat_result, path: Path) -> tuple[object, ...]:
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_rdev, link)


def diff_layer(base: Path, final: Path, out: Path) -> int:
    """Write to `out` every path of `final` that is new or differs from `base` (by metadata, as
    `cp -a` keeps it), and a `.wh.` whiteout for every path of `base` that `final` removed.
    Returns the number of entries."""
    entries = 0
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(final):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(final)
            for name in sorted([*dirnames, *filenames]):
                path = Path(dirpath) / name
                rel = rel_dir / name
                st = path.lstat()
                other = base / rel
                try:
                    same = _signature(other.lstat(), other) == _signature(st, path)
                except FileNotFoundError:
                    same = False
                if same:
                    continue
                info = tar.gettarinfo(str(path), arcname=rel.as_posix())
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                entries += 1
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(base)
            gone = sorted(n for n in [*dirnames, *filenames] if not os.path.lexists(final / rel_dir / n))
            for name in gone:
                info = tarfile.TarInfo((rel_dir / f".wh.{name}").as_posix())
                tar.addfile(info)
                entries += 1
            dirnames[:] = [d for d in dirnames if d not in gone]
    partial.replace(out)
    return entries
