"""The local stand-in for the Dockerfile's base image: a Debian root filesystem built by debootstrap (I/O).

No registry is reachable here, so `FROM python:3.11-slim-bookworm` is satisfied by a bookworm
minbase with Debian's Python 3.11 made to behave like that image where the Dockerfile relies on
it: `python` and `pip` on PATH, pip allowed to install into the system (no EXTERNALLY-MANAGED
marker), headers for building a C extension. Cached by content (the recipe below) in
`<cache>/images/base-<key>/rootfs`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from localcluster.build import cache_root

logger = logging.getLogger(__name__)

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates", "libpython3.11-dev")
# Paths removed after debootstrap: documentation, locales, caches and the PEP 668 marker.
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/lib/python3.11/EXTERNALLY-MANAGED",
)
RECIPE_VERSION = "1"


class BaseImageError(RuntimeError):
    """The base root filesystem could not be built; the message says why."""


def mirror() -> str:
    return os.environ.get("NPG_DEBIAN_MIRROR", DEFAULT_MIRROR)


def recipe_key() -> str:
    """Content key of the base: everything that decides what debootstrap produces."""
    recipe = "\n".join([RECIPE_VERSION, SUITE, mirror(), *PACKAGES, *TRIM])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "images" / f"base-{recipe_key()}"


def _say(msg: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_base(root: Path | None = None) -> Path:
    """Return the cached base rootfs directory, building it (about 3 minutes) when missing."""
    target = base_dir(root)
    rootfs = target / "rootfs"
    if (target / "done").exists():
        return rootfs
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed; run `make install`")
    work = target.with_name(target.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    _say(f"building the base root filesystem (debootstrap {SUITE} minbase; about 3 minutes) in {target}")
    log = work / "debootstrap.log"
    with log.open("wb") as out:
        # A private mount namespace: the /proc and /sys debootstrap mounts in the target never
        # appear in the machine's mount table, even if it is killed half-way.
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(work / "rootfs"),
                mirror(),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise BaseImageError(f"debootstrap failed (exit {proc.returncode}); log {log}:\n{tail}")
    for rel in TRIM:
        path = work / "rootfs" / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif path.exists():
            path.unlink()
    (work / "done").write_text(recipe_key() + "\n")
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    _say(f"base root filesystem ready in {int(time.monotonic() - started)}s")
    return rootfs
