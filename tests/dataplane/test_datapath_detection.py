"""Passive datapath detection against the real iptables, nft, ip and tc of a node netns, with real packets.

Our skeleton installed, nothing is found; a foreign ACCEPT above our jump lets a denied client in (its
packets show it) and is found as a bypass naming the rule; our jump flushed is found at once and the
repair request made; an nft chain at prerouting priority -175 that DNATs the NodePort is found; a tc
filter that is not BPF is no finding. All of it inside the test's own network namespaces.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from enforcer.datapath import DatapathDetector
from enforcer.plan import DesiredState, PortKey
from tests.dataplane.test_robustness import PORT
from tests.netns import CLIENT_A4, CLIENT_B4, NODE_V4, NetnsDataplane, Node

pytestmark = pytest.mark.netns
FOREIGN = ["-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_the_detector_reads_the_real_node_and_names_what_skips_us(node: Node, backend: str, tmp_path: Path) -> None:
    dp = NetnsDataplane(node, backend, tmp_path)
    dp.sync(DesiredState.from_mapping({PortKey(4, "TCP", PORT): [ipaddress.ip_network(f"{CLIENT_A4}/32")]}))
    node.listen(PORT)
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "timeout"  # denied
    repairs: list[int] = []
    detector = DatapathDetector(backend, lambda: [4], node.runner, on_jump_missing=lambda: repairs.append(1))  # type: ignore[arg-type]
    assert detector.check_rules() == ()
    full = detector.check_full()
    assert all(f.verdict != "bypass" for f in full), full
    assert [f.kind for f in full if f.kind == "kube-proxy"] == ["kube-proxy"]  # none here: a suspect, said so

    tool = f"iptables-{backend}"
    node.run([tool, "-w", "5", "-t", "mangle", "-I", "PREROUTING", "1", *FOREIGN])
    assert node.connect(CLIENT_B4, NODE_V4[1], PORT) == "connected"  # the bypass is real
    found = detector.check_rules()
    assert [(f.kind, f.verdict) for f in found] == [("rule-ahead", "bypass")], found
    assert "--ctstate NEW -j ACCEPT" in found[0].evidence and tool in found[0].reason
    node.run([tool, "-w", "5", "-t", "mangle", "-D", "PREROUTING", *FOREIGN])
    assert detector.check_rules() == () and detector.findings() == full

    node.run([tool, "-w", "5", "-t", "mangle", "-F", "PREROUTING"])  # a firewall reload, a cleanup script
    assert [f.kind for f in detector.check_rules()] == ["jump-missing"] and repairs == [1]
    assert detector.jump_missing_since is not None
    dp.sync(DesiredState.from_mapping({PortKey(4, "TCP", PORT): [ipaddress.ip_network(f"{CLIENT_A4}/32")]}))
    assert detector.check_rules() == () and detector.jump_missing_since is None

    # What a BPF or OVS data plane does in effect: the NodePort translated before mangle (-150).
    script = (
        "table ip npgtest-early {\n chain pre {\n  type nat hook prerouting priority -175; policy accept;\n"
        f"  tcp dport {PORT} dnat to 192.0.2.2:8080\n }}\n}}\n"
    )
    node.run(["nft", "-f", "-"], stdin=script)
    try:
        rewrites = [f for f in detector.check_full() if f.kind == "nft-rewrite-ahead"]
        assert len(rewrites) == 1 and rewrites[0].verdict == "bypass", rewrites
        assert "npgtest-early pre" in rewrites[0].reason and "priority -175" in rewrites[0].reason
    finally:
        node.run(["nft", "delete", "table", "ip", "npgtest-early"])
    # A tc filter that is not BPF on the uplink is nothing to report.
    links = node.run(["ip", "-o", "link"]).stdout.splitlines()
    uplink = next(line.split(":")[1].strip().split("@")[0] for line in links if "lo:" not in line)
    node.run(["tc", "qdisc", "add", "dev", uplink, "clsact"])
    node.run(["tc", "filter", "add", "dev", uplink, "ingress", "matchall", "action", "pass"], check=False)
    assert [f for f in detector.check_full() if f.kind == "bpf-program"] == []
