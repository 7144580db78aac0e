"""Crash recovery, concurrent writers, conntrack clearing, backend detection and fixture hygiene (netns)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enforcer import diff
from enforcer.backend import detect_backend
from enforcer.plan import DesiredState, PortKey, decode_state
from tests.netns import CLIENT_A4, CLIENT_B4, NODE_V4, NetnsDataplane, Node, list_namespaces, make_node, run

pytestmark = pytest.mark.netns
BACKENDS = pytest.mark.parametrize("backend", ["legacy", "nft"])
PORT = 30080


def big_state(first_port: int, count: int, salt: int) -> DesiredState:
    """`count` TCP ports, 3 documentation prefixes each."""
    mapping = {}
    for i in range(count):
        nets = [
            ipaddress.ip_network(f"198.51.100.{(i + salt) % 256}/32"),
            ipaddress.ip_network(f"203.0.113.{128 * ((i + salt) % 2)}/25"),
            ipaddress.ip_network(f"192.0.2.{(i * 7 + salt) % 256}/32"),
        ]
        mapping[PortKey(4, "TCP", first_port + i)] = nets
    return DesiredState.from_mapping(mapping)


def wait_quiet(node: Node, timeout: float = 10.0) -> None:
    """Wait until no process runs in the node netns (e.g. an `ipset restore` orphaned by a kill)."""
    deadline = time.monotonic() + timeout
    while run(["ip", "netns", "pids", node.node_ns]).stdout.split():
        assert time.monotonic() < deadline, "processes still running in the node netns"
        time.sleep(0.05)


def _snapshot_diff(before: tuple[str, str], after: tuple[str, str]) -> str:
    lines_before = set("\n".join(before).splitlines())
    lines_after = set("\n".join(after).splitlines())
    only_before = sorted(lines_before - lines_after)[:10]
    only_after = sorted(lines_after - lines_before)[:10]
    return f"only after recovery: {only_before}\nonly in a fresh install: {only_after}"


@BACKENDS
def test_kill_9_mid_sync_then_next_sync_converges_exactly(node: Node, backend: str, tmp_path: Path) -> None:
    states = [big_state(30000, 1000, 0), big_state(30500, 1000, 3), DesiredState()]
    dp = NetnsDataplane(node, backend, tmp_path)
    paths = [dp.write_state(s) for s in states]
    # How long the sync itself takes here (its report's `seconds`): kill at fractions of it.
    node.cli("sync", "--state-json", str(paths[2]), backend=backend)
    out = node.cli("sync", "--state-json", str(paths[0]), backend=backend).stdout
    seconds = float(json.loads(out.splitlines()[-1])["seconds"])
    killed_mid_way = 0
    for round_, fraction in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6, 0.8, 0.05, 0.15, 0.25)):
        if round_ >= 6 and killed_mid_way >= 4:
            break  # enough interrupted syncs; later rounds only guard against a jittery, loaded machine
        target = (round_ + 1) % 3
        proc = node.spawn_cli("sync", "--announce", "--state-json", str(paths[target]), backend=backend)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "syncing"
        time.sleep(seconds * fraction)
        if proc.poll() is None:
            killed_mid_way += 1
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_quiet(node)
        recovery = (target + 1) % 3
        node.cli("sync", "--state-json", str(paths[recovery]), backend=backend)
        installed = decode_state(node.cli("installed", backend=backend).stdout)
        assert installed == states[recovery]
        snapshot = (node.iptables_save(backend), node.ipset_save())
        # The same state programmed from scratch must give byte-identical tables and sets.
        node.cli("cleanup", backend=backend)
        node.cli("sync", "--state-json", str(paths[recovery]), backend=backend)
        fresh = (node.iptables_save(backend), node.ipset_save())
        assert fresh == snapshot, _snapshot_diff(snapshot, fresh)
    assert killed_mid_way >= 4, "too few syncs were interrupted; the kill timing needs adjusting"


_WRITER = r"""
import os, subprocess, sys, time
tool, seconds = sys.argv[1], float(sys.argv[2])
last, failures, i = -1, 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    rules = "".join(f"-A KUBE-TEST -s 192.0.2.{k}/32 -m comment --comment v{i} -j RETURN\n" for k in range(20))
    p = subprocess.run([tool, "--noflush", "-w", "5"], input=f"*mangle\n:KUBE-TEST - [0:0]\n{rules}COMMIT\n",
                       text=True, capture_output=True)
    if p.returncode == 0:
        last = i
    else:
        failures += 1
        sys.stderr.write(p.stderr)
    i += 1
print(last, failures, i)
"""


@BACKENDS
def test_concurrent_restore_writer_loses_nothing(node: Node, backend: str, tmp_path: Path) -> None:
    restore = f"iptables-{backend}-restore"
    node.run([restore, "--noflush", "-w", "5"], "*mangle\n:KUBE-TEST - [0:0]\n-A PREROUTING -j KUBE-TEST\nCOMMIT\n")
    dp = NetnsDataplane(node, backend, tmp_path)
    want = big_state(30000, 50, 1)
    env = {**os.environ, "XTABLES_LOCKFILE": node.lock_path}
    # 30 s of a kube-proxy-like writer (iptables-restore --noflush -w) while our rules churn.
    writer = node.spawn([sys.executable, "-c", _WRITER, restore, "30"], env=env)
    syncs = 0
    while writer.poll() is None:
        # Alternate install and removal so every sync commits to the same table the writer uses.
        dp.sync(want if syncs % 2 == 0 else DesiredState())
        syncs += 1
    dp.sync(want)
    out, err = writer.communicate()
    last, failures, attempts = (int(x) for x in out.split())
    assert syncs >= 10 and attempts >= 10 and last >= 0
    assert failures == 0, err

    saved = node.run([f"iptables-{backend}-save", "-t", "mangle"]).stdout
    theirs = [line for line in saved.splitlines() if line.startswith("-A KUBE-TEST")]
    assert len(theirs) == 20 and all(f"v{last} " in line or line.endswith(f"v{last} -j RETURN") for line in theirs)
    assert [line for line in saved.splitlines() if line.startswith("-A PREROUTING") and "KUBE-TEST" in line]
    assert diff.skeleton_matches(diff.parse_iptables_save(saved), diff.build_skeleton(4))
    assert dp.installed() == want


_UDP_CLIENT = r"""
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0)); s.settimeout(1.0)
for _ in sys.stdin:
    s.sendto(b"ping", (dst, port))
    try:
        s.recvfrom(64); print("connected", flush=True)
    except (socket.timeout, TimeoutError):
        print("timeout", flush=True)
"""


@pytest.mark.parametrize("clear", [False, True])
def test_established_flows_and_clear_conntrack(node: Node, clear: bool, tmp_path: Path) -> None:
    node.listen(PORT)
    # Conntrack only tracks a netns once some rule needs it; kube-proxy's INVALID drop does so on real nodes.
    node.run(["iptables-nft", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
    extra = ("--clear-conntrack",) if clear else ()
    dp = NetnsDataplane(node, "nft", tmp_path, *extra)
    client = subprocess.Popen(
        ["ip", "netns", "exec", node.client_ns, sys.executable, "-c", _UDP_CLIENT, CLIENT_A4, NODE_V4[0], str(PORT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    node._procs.append(client)
    assert client.stdin is not None and client.stdout is not None

    def ping() -> str:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("\n")
        client.stdin.flush()
        return client.stdout.readline().strip()

    assert ping() == "connected"
    report = dp.sync(DesiredState.from_mapping({PortKey(4, "UDP", PORT): []}))
    # New flows are filtered at once either way.
    assert node.connect(CLIENT_B4, NODE_V4[0], PORT, "udp") == "timeout"
    if clear:
        assert report["conntrack_deleted"] == 1
        assert ping() == "timeout"
    else:
        # Only NEW connections meet the filter: the established flow lives on until its conntrack entry ends.
        assert report["conntrack_deleted"] == 0
        assert ping() == "connected"


def test_detect_backend_follows_hints_then_rule_counts(node: Node) -> None:
    assert detect_backend(node.runner) == "legacy"  # nothing anywhere
    node.run(["ip6tables-nft-restore", "--noflush"], "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n")
    assert detect_backend(node.runner) == "nft"
    node.run(["ip6tables-nft", "-t", "mangle", "-X", "KUBE-IPTABLES-HINT"])
    node.run(["iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"])
    node.run(["iptables-nft", "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"])
    assert detect_backend(node.runner) == "legacy"  # the hint wins over the rule count
    node.run(["iptables-legacy", "-t", "mangle", "-X", "KUBE-KUBELET-CANARY"])
    assert detect_backend(node.runner) == "nft"  # 1 nft rule vs 0 legacy rules
    for i in range(2):
        node.run(["iptables-legacy", "-A", "INPUT", "-s", f"192.0.2.{i + 2}/32", "-j", "ACCEPT"])
    assert detect_backend(node.runner) == "legacy"


def test_node_namespaces_and_processes_are_removed_even_on_failure() -> None:
    names: tuple[str, ...] = ()
    procs = []
    with pytest.raises(RuntimeError, match="boom"), make_node() as n:
        names = (n.node_ns, n.client_ns, n.remote_ns)
        assert set(names) <= set(list_namespaces())
        n.listen(PORT)
        procs = list(n._procs)
        raise RuntimeError("boom")
    assert names and not set(names) & set(list_namespaces())
    assert procs and all(p.poll() is not None for p in procs)


@BACKENDS
def test_nodeport_range_change_rebuilds_port_sets(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    dp = NetnsDataplane(node, backend, tmp_path)
    path = dp.write_state(DesiredState.from_mapping({PortKey(4, "TCP", PORT): []}))
    node.cli("sync", "--state-json", str(path), backend=backend)
    out = node.cli("sync", "--state-json", str(path), "--nodeport-range", "30000-30999", backend=backend).stdout
    # The TCP and UDP bitmaps carry the range; the SCTP set (hash:net,port) has none, so it stays.
    assert '"sets_rebuilt": 2' in out
    assert "create npg-4-tcp bitmap:port range 30000-30999" in node.ipset_save()
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "timeout"
    assert not [n for n in node.run(["ipset", "list", "-n"]).stdout.split() if n.endswith(diff.TMP_SUFFIX)]
