"""Doors by real packets: a load-balancer IP the node does not hold (MetalLB L2), DNATed like kube-proxy does,
filtered before the DNAT on both backends, IPv4 and IPv6, TCP and UDP (docs/dataplane.md, "Doors")."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from contract.annotation import CidrRule, Door, NodePortEntry, PolicyRef, Protocol, SourceSet
from contract.doors import DoorsAnnotation
from enforcer import diff
from enforcer.doors import plan_doors
from enforcer.plan import DesiredState, DoorKey, Family, PortKey, ProtectedDoor
from tests.dataplane.test_enforcement import prime
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
PORT = 8080  # the Service port: a door's port, any number
NODE_PORT = 30080
LB4, LB4_NEW, LB6 = "198.51.100.200", "198.51.100.201", "2001:db8:5::200"


def door(address: str, proto: Protocol, cidrs: list[str]) -> ProtectedDoor:
    family: Family = 6 if ":" in address else 4
    return ProtectedDoor(DoorKey(family, proto, address, PORT), tuple(ipaddress.ip_network(c) for c in cidrs))


def state(*doors: ProtectedDoor, node_port: bool = True) -> DesiredState:
    ports = DesiredState.from_mapping({PortKey(4, "TCP", NODE_PORT): []}) if node_port else DesiredState()
    return ports.with_doors(tuple(sorted(doors, key=lambda d: d.key)))


def route_doors(node: Node, backend: str) -> None:
    """As MetalLB L2 and kube-proxy would: the client reaches the LB IPs through the node, which holds
    none of them and DNATs each to its local listener (nat PREROUTING, after our mangle filter)."""
    for lb in (LB4, LB4_NEW):
        run(["ip", "-n", node.client_ns, "route", "add", f"{lb}/32", "via", NODE_V4[0]])
    run(["ip", "-n", node.client_ns, "-6", "route", "add", f"{LB6}/128", "via", NODE_V6[0]])
    script4 = "*nat\n" + "".join(
        f"-A PREROUTING -d {lb}/32 -p {p} --dport {PORT} -j DNAT --to-destination {NODE_V4[0]}:{PORT}\n"
        for lb in (LB4, LB4_NEW) for p in ("tcp", "udp")
    ) + "COMMIT\n"
    node.run([f"iptables-{backend}-restore", "--noflush", "-w", "5"], script4)
    script6 = "*nat\n" + "".join(
        f"-A PREROUTING -d {LB6}/128 -p {p} --dport {PORT} -j DNAT --to-destination [{NODE_V6[0]}]:{PORT}\n"
        for p in ("tcp", "udp")
    ) + "COMMIT\n"
    node.run([f"ip6tables-{backend}-restore", "--noflush", "-w", "5"], script6)


@BACKENDS
def test_deny_allow_move_and_release_a_door(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    node.listen(NODE_PORT)
    node.listen(PORT, where="remote")
    route_doors(node, backend)
    prime(node, backend)
    before = (node.iptables_save(backend), node.ipset_save())
    # The first packet of each client resolves the node's neighbour entry for it (IPv6 NDP): a generous
    # timeout here only waits for that, it decides nothing; every later "timeout" is a drop.
    for src, lb in ((CLIENT_A4, LB4), (CLIENT_B4, LB4), (CLIENT_A6, LB6), (CLIENT_B6, LB6)):
        assert node.connect(src, lb, PORT, timeout=5) == "connected", (src, lb)
        assert node.connect(src, lb, PORT, "udp", timeout=5) == "connected", (src, lb)
    dp = NetnsDataplane(node, backend, tmp_path)

    # Deny-all: every door dropped, for both clients, TCP and UDP, IPv4 and IPv6; the NodePort too.
    deny = state(*(door(lb, p, []) for lb in (LB4, LB6) for p in ("TCP", "UDP")))
    dp.sync(deny)
    assert dp.installed() == deny
    for src, lb in ((CLIENT_A4, LB4), (CLIENT_B4, LB4), (CLIENT_A6, LB6), (CLIENT_B6, LB6)):
        assert node.connect(src, lb, PORT) == "timeout", (src, lb)
        assert node.connect(src, lb, PORT, "udp") == "timeout", (src, lb)
    assert node.connect(CLIENT_A4, NODE_V4[0], NODE_PORT) == "timeout"
    # Not a door: the other LB IP, the node's own address on the Service port, a forwarded connection.
    assert node.connect(CLIENT_A4, LB4_NEW, PORT) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "connected"
    assert node.connect(CLIENT_A4, REMOTE_ADDR, PORT) == "connected"

    # Allow one CIDR per family: one client back on every door.
    allow = state(*(door(lb, p, [c]) for lb, c in ((LB4, "198.51.100.0/24"), (LB6, "2001:db8:2::/64"))
                    for p in ("TCP", "UDP")))
    dp.sync(allow)
    assert dp.installed() == allow
    assert node.connect(CLIENT_A4, LB4, PORT) == "connected"
    assert node.connect(CLIENT_A4, LB4, PORT, "udp") == "connected"
    assert node.connect(CLIENT_B4, LB4, PORT) == "timeout"
    assert node.connect(CLIENT_B6, LB6, PORT) == "connected"
    assert node.connect(CLIENT_A6, LB6, PORT, "udp") == "timeout"

    # The LB IP changes: the new door filtered, the old one released.
    moved = state(door(LB4_NEW, "TCP", ["198.51.100.0/24"]))
    dp.sync(moved)
    assert node.connect(CLIENT_B4, LB4_NEW, PORT) == "timeout"
    assert node.connect(CLIENT_A4, LB4_NEW, PORT) == "connected"
    assert node.connect(CLIENT_B4, LB4, PORT) == "connected"
    assert node.connect(CLIENT_B6, LB6, PORT) == "connected"

    # The last door goes, the NodePort stays: the skeleton is the one without doors again.
    dp.sync(state())
    assert node.connect(CLIENT_B4, LB4_NEW, PORT) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], NODE_PORT) == "timeout"
    assert "NPG-DOOR" not in node.iptables_save(backend)
    assert not [n for n in node.run(["ipset", "list", "-n"]).stdout.split() if "door" in n]

    # Policies deleted: everything answers, and nothing of ours is left.
    report = dp.sync(DesiredState())
    assert report["rules_removed"] == len(diff.build_skeleton(4))
    assert node.connect(CLIENT_A4, NODE_V4[0], NODE_PORT) == "connected"
    assert (node.iptables_save(backend), node.ipset_save()) == before


@BACKENDS
def test_door_only_family_and_a_door_on_a_node_address(node: Node, backend: str, tmp_path: Path) -> None:
    node.listen(PORT)
    route_doors(node, backend)
    dp = NetnsDataplane(node, backend, tmp_path)
    entry = NodePortEntry(
        node_port=0, protocol="TCP", service="lb", service_port=PORT, ip_families=("IPv4",), scope="all",
        allow=SourceSet(False, (CidrRule("203.0.113.0/24"),)),
        doors=(Door(NODE_V4[0], "externalIP"), Door(LB4, "loadBalancer")),
    )
    plan = plan_doors([DoorsAnnotation(PolicyRef("default", "p", "u"), (entry,))], node_addresses={NODE_V4[0]})
    # The door on the node's own address is refused; the LB IP is filtered (a family with doors only).
    assert [r.key.address for r in plan.rejected] == [NODE_V4[0]]
    dp.sync(DesiredState().with_doors(plan.doors))
    assert node.connect(CLIENT_A4, LB4, PORT) == "timeout"
    assert node.connect(CLIENT_B4, LB4, PORT) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], PORT) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[1], PORT) == "connected"
    dp.sync(DesiredState())
    assert node.connect(CLIENT_A4, LB4, PORT) == "connected"
