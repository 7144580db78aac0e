"""Real packets through the enforcer dataplane in network namespaces, for both iptables backends."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from contract.annotation import Annotation, CidrRule, NodePortVerdict, PolicyRef, Protocol, SourceSet
from enforcer import diff
from enforcer.plan import DesiredState, PortKey, plan_desired_state
from tests.netns import (
    CLIENT_A4,
    CLIENT_A6,
    CLIENT_B4,
    CLIENT_B6,
    NODE_V4,
    NODE_V6,
    REMOTE_ADDR,
    NetnsDataplane,
    Node,
    run,
)

pytestmark = pytest.mark.netns
BACKENDS = pytest.mark.parametrize("backend", ["legacy", "nft"])
PORT = 30080


def state(*entries: tuple[int, Protocol, int, list[str]]) -> DesiredState:
    return DesiredState.from_mapping(
        {PortKey(f, p, port): [ipaddress.ip_network(c) for c in cidrs] for f, p, port, cidrs in entries}  # type: ignore[arg-type]
    )


def annotation(port: int, allow: SourceSet, proto: Protocol = "TCP") -> Annotation:
    verdict = NodePortVerdict(port, proto, "web", 80, ("IPv4",), allow)
    return Annotation(PolicyRef("default", "p", "uid-1"), (verdict.entry(),))


def prime(node: Node, backend: str) -> None:
    # Listing a legacy table instantiates it in this netns, as kubelet and kube-proxy have on any real
    # node; python-iptables probes every table when it builds a jump to a user chain. Snapshots taken
    # afterwards then compare only what we add and remove. kubelet's hint chain creates mangle (nft).
    for tool in (f"iptables-{backend}", f"ip6tables-{backend}"):
        for table in ("filter", "nat", "mangle", "raw", "security"):
            node.run([tool, "-t", table, "-S"])
        node.run([f"{tool}-restore", "--noflush", "-w", "5"], "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n")


@BACKENDS
def test_tcp_ipv4_deny_allow_except_and_removal(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    prime(node, backend)
    before = (node.iptables_save(backend), node.ipset_save())
    dp = NetnsDataplane(node, backend, tmp_path)
    dst = NODE_V4[0]
    assert node.connect(CLIENT_A4, dst, PORT) == "connected"
    assert node.connect(CLIENT_B4, dst, PORT) == "connected"

    dp.sync(state((4, "TCP", PORT, [])))
    assert node.connect(CLIENT_A4, dst, PORT) == "timeout"
    assert node.connect(CLIENT_B4, dst, PORT) == "timeout"
    # The other node address is local too.
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"

    dp.sync(state((4, "TCP", PORT, ["198.51.100.0/24"])))
    assert node.connect(CLIENT_A4, dst, PORT) == "connected"
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"

    carved = plan_desired_state(
        [annotation(PORT, SourceSet(False, (CidrRule("198.51.100.0/24", ("198.51.100.10/32",)),
                                            CidrRule("203.0.113.0/24"))))]
    ).state
    report = dp.sync(carved)
    assert report["members_added"] and report["members_removed"] == 1
    assert dp.installed() == carved
    assert node.connect(CLIENT_A4, dst, PORT) == "timeout"
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "connected"

    report = dp.sync(DesiredState())
    assert report["rules_removed"] == len(diff.build_skeleton(4))
    assert node.connect(CLIENT_A4, dst, PORT) == "connected"
    assert node.connect(CLIENT_B4, dst, PORT) == "connected"
    assert (node.iptables_save(backend), node.ipset_save()) == before


@BACKENDS
def test_udp_and_ipv6(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    dp = NetnsDataplane(node, backend, tmp_path)
    assert node.connect(CLIENT_A6, NODE_V6[0], PORT, "udp") == "connected"
    dp.sync(state((4, "UDP", PORT, []), (6, "UDP", PORT, []), (6, "TCP", PORT, [])))
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT, "udp") == "timeout"
    assert node.connect(CLIENT_A6, NODE_V6[0], PORT, "udp") == "timeout"
    assert node.connect(CLIENT_B6, NODE_V6[1], PORT, "tcp") == "timeout"
    # ipset is per network namespace: the node's sets are not visible from the root namespace (read only).
    assert "npg-6-allow" in node.run(["ipset", "list", "-n"]).stdout.split()
    assert not [n for n in run(["ipset", "list", "-n"]).stdout.split() if n.startswith("npg-")]
    # TCP over IPv4 is not protected: the protocol and family are part of the key.
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT, "tcp") == "connected"

    dp.sync(state((4, "UDP", PORT, ["203.0.113.0/24"]), (6, "UDP", PORT, ["2001:db8:1::/64"]),
                  (6, "TCP", PORT, ["2001:db8:2::10/128"])))
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT, "udp") == "timeout"
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT, "udp") == "connected"
    assert node.connect(CLIENT_A6, NODE_V6[0], PORT, "udp") == "connected"
    assert node.connect(CLIENT_B6, NODE_V6[1], PORT, "udp") == "timeout"
    assert node.connect(CLIENT_B6, NODE_V6[1], PORT, "tcp") == "connected"
    assert node.connect(CLIENT_A6, NODE_V6[0], PORT, "tcp") == "timeout"

    dp.sync(DesiredState())
    assert node.connect(CLIENT_A6, NODE_V6[0], PORT, "udp") == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT, "udp") == "connected"
    assert not [n for n in node.run(["ipset", "list", "-n"]).stdout.split() if n.startswith("npg-")]


@BACKENDS
def test_non_local_destination_and_out_of_range_ports_untouched(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT, where="remote")
    node.listen(8080)
    node.listen(PORT)
    dp = NetnsDataplane(node, backend, tmp_path)
    dp.sync(state((4, "TCP", PORT, []), (4, "UDP", PORT, [])))
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "timeout"
    # Same port, forwarded through the node to another address: not node-local, never filtered.
    assert node.connect(CLIENT_A4, REMOTE_ADDR, PORT) == "connected"
    assert node.connect(CLIENT_A4, REMOTE_ADDR, PORT, "udp") == "connected"
    # A port outside the NodePort range is refused by the planner and by the dataplane.
    result = plan_desired_state([annotation(8080, SourceSet.nobody())])
    assert result.state == DesiredState() and [r.node_port for r in result.rejected] == [8080]
    path = dp.write_state(state((4, "TCP", 8080, [])))
    refused = node.cli("sync", "--state-json", str(path), backend=backend, check=False)
    assert refused.returncode != 0 and "outside the NodePort range" in refused.stderr
    assert node.connect(CLIENT_A4, NODE_V4[0], 8080) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "timeout"


@BACKENDS
def test_drift_is_repaired_and_reported(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    dp = NetnsDataplane(node, backend, tmp_path)
    want = state((4, "TCP", PORT, ["198.51.100.0/24"]), (4, "TCP", PORT + 1, []))
    dp.sync(want)
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"
    again = dp.sync(want)
    # Nothing changed: counts and headers match our last write, so members are not dumped again.
    assert again["drift_repaired"] is False and again["full_readback"] is False
    assert again["members_added"] == again["members_removed"] == again["rules_added"] == 0

    node.run([f"iptables-{backend}", "-t", "mangle", "-F", diff.CHECK_CHAIN])
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "connected"
    report = dp.sync(want)
    assert report["drift_repaired"] is True and report["rules_added"] == len(diff.build_skeleton(4))
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"

    node.run(["ipset", "del", diff.allow_set_name(4), f"198.51.100.0/24,tcp:{PORT}"])
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "timeout"
    report = dp.sync(want)
    assert report["drift_repaired"] is True and report["members_added"] == 1 and report["full_readback"] is True
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "connected"

    node.run(["ipset", "del", diff.port_set_name(4, "TCP"), str(PORT)])
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "connected"
    assert dp.sync(want)["drift_repaired"] is True
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"
    assert dp.installed() == want


@BACKENDS
def test_cleanup_restores_tables_and_sets_exactly(node: Node, backend: str, tmp_path: Path) -> None:
    prime(node, backend)
    # Foreign state that must survive untouched.
    node.run(["ipset", "create", "other-set", "hash:ip"])
    node.run(["ipset", "add", "other-set", "192.0.2.7"])
    node.run([f"iptables-{backend}-restore", "--noflush", "-w", "5"],
             "*mangle\n:KUBE-TEST - [0:0]\n-A KUBE-TEST -s 192.0.2.9/32 -j RETURN\n"
             "-I PREROUTING 1 -j KUBE-TEST\nCOMMIT\n")
    before = (node.iptables_save(backend), node.ipset_save())
    dp = NetnsDataplane(node, backend, tmp_path)
    dp.sync(state((4, "TCP", PORT, ["198.51.100.0/24"]), (6, "UDP", PORT, [])))
    during = node.iptables_save(backend)
    assert during != before[0] and "KUBE-TEST" in during
    # Our jump is first in the hook; the foreign jump keeps its place behind it.
    hook = [line for line in during.splitlines() if line.startswith(f"iptables-{backend}-save: -A PREROUTING")]
    assert "NPG-INGRESS" in hook[0] and "KUBE-TEST" in hook[1]
    dp.cleanup()
    assert (node.iptables_save(backend), node.ipset_save()) == before
