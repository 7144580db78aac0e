"""What "the machine itself" is, for the before/after comparison of a test session (I/O).

The root network namespace (iptables legacy and nft, both families; the nft ruleset; routes of
every table; links; ipsets), the machine-global sysctls kubelet and kube-proxy would like to
write, and the cgroup mounts with their top-level groups. Counters are dropped: traffic of
other processes on the machine changes them legitimately.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set in the session's stash: when the session started (clock ticks), and whether a cluster ran.
SESSION_START = pytest.StashKey[int]()
CLUSTER_RAN = pytest.StashKey[bool]()
REPO = Path(__file__).resolve().parents[1]
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
COMMANDS = {
    "iptables-legacy": ["iptables-legacy-save"],
    "ip6tables-legacy": ["ip6tables-legacy-save"],
    "iptables-nft": ["iptables-nft-save"],
    "ip6tables-nft": ["ip6tables-nft-save"],
    "nft": ["nft", "list", "ruleset"],
    "routes4": ["ip", "-4", "route", "show", "table", "all"],
    "routes6": ["ip", "-6", "route", "show", "table", "all"],
    "links": ["ip", "-o", "link", "show"],
    "ipsets": ["ipset", "save"],
}
COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


@dataclass(frozen=True, slots=True)
class MachineSnapshot:
    sections: dict[str, str]

    def differences(self, later: MachineSnapshot) -> dict[str, tuple[str, str]]:
        return {
            key: (self.sections.get(key, ""), later.sections.get(key, ""))
            for key in sorted(set(self.sections) | set(later.sections))
            if self.sections.get(key) != later.sections.get(key)
        }


def _normalize(text: str) -> str:
    lines = [COUNTERS.sub("", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(line.rstrip() for line in lines)


def take_snapshot() -> MachineSnapshot:
    sections: dict[str, str] = {}
    for key, argv in COMMANDS.items():
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        sections[key] = _normalize(proc.stdout) + (f"\n(exit {proc.returncode})" if proc.returncode else "")
    for key in SYSCTLS:
        path = Path("/proc/sys") / key
        sections[f"sysctl {key}"] = path.read_text().strip() if path.exists() else "(absent)"
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = [line for line in mountinfo if "cgroup" in line]
    sections["cgroup mounts"] = "\n".join(" ".join(line.split()[3:]) for line in mounts)
    # Every other mount, without IDs; network namespaces (nsfs, under /run/netns) come and go with
    # any test run on the machine, so they are left out.
    others = []
    for line in mountinfo:
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype != "nsfs" and not fields[4].startswith("/run/netns") and "cgroup" not in line:
            others.append(f"{fields[4]} {fstype} {fields[3]}")
    sections["mounts"] = "\n".join(sorted(others))
    root = Path("/sys/fs/cgroup")
    sections["cgroup top-level groups"] = "\n".join(
        sorted(str(d.relative_to(root)) for h in root.iterdir() if h.is_dir() for d in h.iterdir() if d.is_dir())
    )
    return MachineSnapshot(sections)


def boot_ticks() -> int:
    """Now, in the clock /proc/PID/stat start times use (clock ticks since boot)."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _stat(pid: str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def our_processes(since_ticks: int, markers: tuple[str, ...] = ()) -> list[str]:
    """Processes this session leaked: started since `since_ticks`, working directory this repository
    (every process the tests, the cluster tool or the demo start inherits it) or a marker in the
    command line, and either still our descendant or orphaned (parent PID 1). Other people's
    processes in the same directory (a shell) are neither, so they do not count."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, ValueError, IndexError):
                continue
    me = os.getpid()

    def descends_from_me(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
            seen += 1
        return False

    found = []
    for pid, ppid in parents.items():
        if pid == me or not (ppid == 1 or descends_from_me(pid)):
            continue
        try:
            stat = _stat(str(pid))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if stat[0] == "Z" or int(stat[19]) < since_ticks:
            continue
        if cwd == str(REPO) or any(m in cmdline for m in markers):
            found.append(f"pid {pid} ppid {ppid} cwd {cwd}: {cmdline[:200]}")
    return found


def wait_for_no_processes(since_ticks: int, markers: tuple[str, ...] = (), timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    left = our_processes(since_ticks, markers)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = our_processes(since_ticks, markers)
    return left
