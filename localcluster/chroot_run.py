"""Run one Dockerfile RUN command in a chroot (used by localcluster.image inside fresh mount + PID namespaces).

`python -m localcluster.chroot_run ROOTFS WORKDIR [--bind SRC:TARGET]... --env K=V... -- ARGV...`
mounts proc, the machine's /dev, resolv.conf and CA bundle (a TLS-intercepting egress proxy needs
its CA trusted by pip inside the build, as with `docker build` behind such a proxy) and the RUN bind
mounts into ROOTFS; they exist only in the private mount namespace `unshare` made, never in a layer.
Then it chroots and execs ARGV.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    head, command = argv[:sep], argv[sep + 1 :]
    rootfs, workdir = Path(head[0]), head[1]
    binds: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    mode = ""
    for word in head[2:]:
        if word in ("--bind", "--env"):
            mode = word
        elif mode == "--bind":
            src, target = word.split(":", 1)
            binds.append((src, target))
        elif mode == "--env":
            key, _, value = word.partition("=")
            env[key] = value
    _mount("-t", "proc", "proc", str(rootfs / "proc"))
    _mount("--rbind", "/dev", str(rootfs / "dev"))
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink() or not resolv.exists():
        resolv.unlink(missing_ok=True)
        resolv.touch()
    _mount("--bind", "/etc/resolv.conf", str(resolv))
    bundle = rootfs / CA_BUNDLE.lstrip("/")
    if Path(CA_BUNDLE).exists() and bundle.exists():
        _mount("--bind", "-o", "ro", CA_BUNDLE, str(bundle))
    for src, target in binds:
        path = rootfs / target.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        _mount("--bind", "-o", "ro", src, str(path))
    os.chroot(rootfs)
    os.chdir(workdir)
    env.setdefault("HOME", "/root")
    os.execvpe(command[0], command, env)  # noqa: S606 - the Dockerfile's own RUN command


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
