"""What a local cluster has made, on disk, and the teardown that removes all of it (I/O).

`up` records every process (pid + start time, so a recycled pid is never killed) before it
goes on; `down` kills them, everything still inside the cluster's network namespaces or
cgroups, deletes the cgroups (also the ones runc makes under /sys/fs/cgroup/unified), the
namespaces and the work directory. Namespaces and cgroups are also found by their name
prefix, so a crash between creating something and recording it leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


def state_root() -> Path:
    # Root-owned and fixed, so `down` finds a crashed cluster's state; not a shared scratch file.
    return Path(os.environ.get("NPG_CLUSTER_DIR", "/var/tmp/nodeport-guard-cluster"))  # noqa: S108


def cluster_dir(name: str) -> Path:
    return state_root() / name


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    start: str  # field 22 of /proc/PID/stat: tells a recycled pid apart
    what: str


@dataclass
class State:
    name: str
    prefix: str
    owner_pid: int = 0  # 0: nobody; else the process whose death makes the cluster stale
    starter_pid: int = 0  # the `up` that is making it; if it dies before `ready`, the cluster is stale
    ready: bool = False
    apiserver_url: str = ""
    procs: list[Proc] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return cluster_dir(self.name)

    @property
    def path(self) -> Path:
        return self.dir / "state.json"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    def record(self, pid: int, what: str) -> None:
        self.procs.append(Proc(pid, process_start(pid), what))
        self.save()

    @classmethod
    def load(cls, name: str) -> State | None:
        path = cluster_dir(name) / "state.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        procs = [Proc(**p) for p in raw.pop("procs", [])]
        return cls(**raw, procs=procs)


def process_start(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def alive(proc: Proc) -> bool:
    return bool(proc.start) and process_start(proc.pid) == proc.start


def list_clusters() -> list[str]:
    root = state_root()
    names = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if NETNS_DIR.is_dir():
        names |= {p.name.split("-")[1] for p in NETNS_DIR.iterdir() if p.name.startswith("npgc-")}
    return sorted(names)


def is_stale(name: str) -> bool:
    """A cluster whose owner died (a killed test session), whose `up` died half-way, or without a state file."""
    state = State.load(name)
    if state is None:
        return True
    if not state.ready and process_start(state.starter_pid) == "":
        return True
    return state.owner_pid != 0 and process_start(state.owner_pid) == ""


def _netns_pids(netns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False).stdout
    return {int(p) for p in out.split()}


def cgroup_dirs(prefix: str) -> list[Path]:
    """Our top-level cgroups in every mounted hierarchy (v1 controllers, name=systemd, unified)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(
        d for h in CGROUP_ROOT.iterdir() if h.is_dir() for d in h.glob(prefix + "*") if d.is_dir()
    )


def _cgroup_pids(top: Path) -> set[int]:
    pids: set[int] = set()
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in procs.read_text().split()}
    return pids


def _rmdir_trees(tops: list[Path], timeout: float = 20) -> list[Path]:
    """rmdir cgroup trees bottom-up (cgroups go with rmdir, never rm -r), retrying while the kernel
    still drains them; returns the tops that could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        dirs = [d for top in tops for d in top.rglob("*") if d.is_dir()] + [t for t in tops if t.exists()]
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        left = [t for t in tops if t.exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill(pids: set[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def teardown(name: str, prefix: str | None = None) -> list[str]:
    """Remove everything cluster `name` made. Returns what could not be removed (empty on success)."""
    state = State.load(name)
    prefix = prefix or (state.prefix if state else f"npgc-{name}-")
    problems: list[str] = []
    netns = sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)) if NETNS_DIR.is_dir() else []
    for attempt in range(20):
        victims: set[int] = set()
        if state:
            victims |= {p.pid for p in state.procs if alive(p)}
        for ns in netns:
            victims |= _netns_pids(ns)
        for top in cgroup_dirs(prefix):
            victims |= _cgroup_pids(top)
        victims = {p for p in victims if p != os.getpid() and not _zombie(p)}
        if not victims:
            break
        logger.info("killing %d processes of cluster %s (round %d)", len(victims), name, attempt + 1)
        _kill(victims)
        time.sleep(0.3)
    started = time.monotonic()
    for top in _rmdir_trees(cgroup_dirs(prefix)):
        problems.append(f"cgroup {top} still exists")
    logger.info("cgroups of cluster %s removed in %.1fs", name, time.monotonic() - started)
    for ns in netns:
        proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            problems.append(f"netns {ns}: {proc.stderr.strip()}")
    directory = cluster_dir(name)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            problems.append(f"directory {directory} still exists")
    return problems
