"""Audit mode and drop counters with real packets in network namespaces, for both iptables backends.

An audited deny lets new connections through and counts each; the same port enforced drops them
and counts each drop; the counters equal the probes sent. Probes that are dropped use a 0.5 s
timeout: a TCP client retransmits its SYN after 1 s, and each attempt would count.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from contract.annotation import Mode
from enforcer.plan import DesiredState, PortKey
from tests.dataplane.test_enforcement import prime
from tests.netns import CLIENT_A4, CLIENT_A6, CLIENT_B4, CLIENT_B6, NODE_V4, NODE_V6, NetnsDataplane, Node

pytestmark = pytest.mark.netns
BACKENDS = pytest.mark.parametrize("backend", ["legacy", "nft"])
PORT = 30080
DROPPED = 0.5  # seconds: one SYN, no retransmit


def modal(mode: Mode) -> DesiredState:
    """TCP/IPv4 and UDP/IPv6 on PORT, allowing only client A's networks, in `mode`."""
    allowed = {
        PortKey(4, "TCP", PORT): [ipaddress.ip_network("198.51.100.0/24")],
        PortKey(6, "UDP", PORT): [ipaddress.ip_network("2001:db8:1::/64")],
    }
    return DesiredState.from_mapping(allowed, dict.fromkeys(allowed, mode))


def probes(node: Node, n: int, src: str, dst: str, proto: str = "tcp", timeout: float = 1.0) -> list[str]:
    return [node.connect(src, dst, PORT, proto, timeout) for _ in range(n)]  # type: ignore[arg-type]


@BACKENDS
def test_audit_counts_and_lets_through_then_enforce_drops_and_counts(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    prime(node, backend)
    before = (node.iptables_save(backend), node.ipset_save())
    dp = NetnsDataplane(node, backend, tmp_path)

    dp.sync(modal("audit"))
    assert dp.installed() == modal("audit")
    assert probes(node, 3, CLIENT_B4, NODE_V4[0]) == ["connected"] * 3  # denied by the verdict, audited
    assert probes(node, 2, CLIENT_B4, NODE_V4[1]) == ["connected"] * 2  # the node's other address
    assert probes(node, 2, CLIENT_A4, NODE_V4[0]) == ["connected"] * 2  # allowed: never counted
    assert probes(node, 4, CLIENT_B6, NODE_V6[1], "udp") == ["connected"] * 4
    assert probes(node, 1, CLIENT_A6, NODE_V6[0], "udp") == ["connected"]
    assert dp.counters() == {(4, "TCP", PORT, "audit"): 5, (6, "UDP", PORT, "audit"): 4}

    # A full read-back sync of the same state rewrites nothing, so no counter is reset.
    assert dp.sync(modal("audit"))["members_added"] == 0
    assert dp.counters() == {(4, "TCP", PORT, "audit"): 5, (6, "UDP", PORT, "audit"): 4}

    dp.sync(modal("enforce"))
    assert dp.installed() == modal("enforce")
    assert probes(node, 3, CLIENT_B4, NODE_V4[0], timeout=DROPPED) == ["timeout"] * 3
    assert probes(node, 2, CLIENT_B6, NODE_V6[1], "udp", DROPPED) == ["timeout"] * 2
    assert probes(node, 1, CLIENT_A4, NODE_V4[0]) == ["connected"]
    assert dp.counters() == {
        (4, "TCP", PORT, "audit"): 5,
        (6, "UDP", PORT, "audit"): 4,
        (4, "TCP", PORT, "enforce"): 3,
        (6, "UDP", PORT, "enforce"): 2,
    }

    # Back to audit: passes again and keeps counting where it was.
    dp.sync(modal("audit"))
    assert probes(node, 2, CLIENT_B4, NODE_V4[0]) == ["connected"] * 2
    assert dp.counters()[(4, "TCP", PORT, "audit")] == 7

    dp.sync(DesiredState())
    assert (node.iptables_save(backend), node.ipset_save()) == before  # counter sets and NPG-AUDIT gone too


@BACKENDS
def test_the_node_wide_audit_switch_drops_nothing(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    dp = NetnsDataplane(node, backend, tmp_path, "--audit-all")
    dp.sync(modal("enforce"))
    assert probes(node, 2, CLIENT_B4, NODE_V4[0]) == ["connected"] * 2
    assert dp.counters() == {(4, "TCP", PORT, "audit"): 2}
    dp.cleanup()
    assert not [n for n in node.run(["ipset", "list", "-n"]).stdout.split() if n.startswith("npg-")]
