"""The holder of a node's private mount namespace: makes the node's mounts from inside it, then waits (I/O).

Started as `unshare --mount --propagation private -- python -m localcluster.mountns DIR [KEY=VALUE]...`:
unshare has already made the new mount namespace when this runs, so the mounts below can only
ever land in it (never in the machine's). It mounts tmpfs on /run and /var/log, bind-mounts a
file holding VALUE over /proc/sys/KEY for each KEY=VALUE (files kept in DIR), prints "ready"
and sleeps until killed; the namespace lives as long as this process or a process inside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def main(argv: list[str]) -> int:
    files = Path(argv[0])
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        print("not in a new mount namespace; refusing to mount anything", file=sys.stderr)
        return 1
    for target in ("/run", "/var/log"):
        _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", target)
    files.mkdir(parents=True, exist_ok=True)
    for pair in argv[1:]:
        key, _, value = pair.partition("=")
        f = files / key.replace("/", ".")
        f.write_text(value + "\n")
        _mount("--bind", str(f), f"/proc/sys/{key}")
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
