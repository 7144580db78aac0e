"""Packing root filesystems into images without a Docker engine (umoci + skopeo), and the pause image (I/O).

Images are written as docker-archive tarballs, the form `ctr images import` loads into a
node's containerd. Everything is cached by content in `<cache>/images/`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from localcluster.build import cache_root

logger = logging.getLogger(__name__)

PAUSE_NAME = "localhost/nodeport-guard-pause:1.0"
PAUSE_SOURCE = r"""
/* The pod sandbox's process: wait for a signal, exit 0 on TERM/INT, reap nothing. */
#include <signal.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
"""


class ImageError(RuntimeError):
    """An image could not be built or packed; the message says which step."""


def images_dir() -> Path:
    return cache_root() / "images"


def run(argv: Sequence[str], what: str, timeout: float = 1800) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {argv[0]} is not installed; run `make install`") from exc
    if proc.returncode != 0:
        raise ImageError(f"{what}: {' '.join(argv)} exited {proc.returncode}:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc.stdout


def say(msg: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pack(
    layers: Sequence[Path], name: str, out: Path, *, entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
    user: str = "", env: Sequence[str] = (), workdir: str = "", labels: dict[str, str] | None = None,
    exposed: Sequence[str] = (),
) -> None:
    """Layer tarballs (bottom first) + config -> a docker-archive at `out` named `name`."""
    with tempfile.TemporaryDirectory(prefix="npg-oci-", dir=out.parent) as tmp:
        layout = Path(tmp) / "layout"
        tag = "build"
        run(["umoci", "init", "--layout", str(layout)], "umoci init")
        run(["umoci", "new", "--image", f"{layout}:{tag}"], "umoci new")
        for layer in layers:
            run(["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(layer)], f"add-layer {layer.name}")
        config = ["umoci", "config", "--image", f"{layout}:{tag}", "--no-history"]
        config += [f"--config.entrypoint={e}" for e in entrypoint]
        config += [f"--config.cmd={c}" for c in cmd]
        config += [f"--config.env={e}" for e in env]
        config += [f"--config.exposedports={p}" for p in exposed]
        config += [f"--config.label={k}={v}" for k, v in (labels or {}).items()]
        if user:
            config.append(f"--config.user={user}")
        if workdir:
            config.append(f"--config.workingdir={workdir}")
        if not entrypoint:
            config.append("--clear=config.entrypoint")
        run(config, "umoci config")
        partial = out.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{partial}:{name}"], "skopeo copy")
        partial.replace(out)


def tar_directory(src: Path, out: Path) -> None:
    """A layer tarball of `src` (numeric owners, xattrs kept), written atomically."""
    partial = out.with_suffix(".partial")
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(src), "-cf", str(partial), "."], f"tar {src}")
    partial.replace(out)


def ensure_pause_image() -> Path:
    """The sandbox image: a static binary that waits for a signal (~0.7 MB), cached by its source."""
    key = hashlib.sha256((PAUSE_NAME + PAUSE_SOURCE).encode()).hexdigest()[:16]
    out = images_dir() / f"pause-{key}.tar"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise ImageError("gcc is not installed; run `make install`")
    out.parent.mkdir(parents=True, exist_ok=True)
    say("building the pause image (static C binary)")
    with tempfile.TemporaryDirectory(prefix="npg-pause-", dir=out.parent) as tmp:
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_SOURCE)
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        run(["gcc", "-static", "-Os", "-s", "-o", str(rootfs / "pause"), str(src)], "gcc -static pause.c")
        layer = Path(tmp) / "layer.tar"
        tar_directory(rootfs, layer)
        pack([layer], PAUSE_NAME, out, entrypoint=["/pause"], user="65535:65535")
    return out
