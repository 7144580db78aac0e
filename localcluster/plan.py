"""The local cluster's layout: namespace names, addresses, CIDRs and per-node settings (pure).

Only documentation ranges are used (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), every
link lives inside a namespace of ours. One "net" namespace is the router: a bridge `lan` for
the control plane and the nodes, one veth per client namespace, routes to each node's pods.

    client-a 198.51.100.70  ─┐                 ┌─ cp     198.51.100.2   (etcd, apiserver, kcm, scheduler)
    client-b 203.0.113.10   ─┴─ net (router) ──┼─ node1  198.51.100.11  pods 203.0.113.128/26  kube-proxy iptables
                                   lan bridge  └─ node2  198.51.100.12  pods 203.0.113.192/26  kube-proxy nftables
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ProxyMode = Literal["iptables", "nftables"]

LAN_V4, LAN_V6 = "198.51.100.0/26", "2001:db8:10::/64"
ROUTER_LAN_V4, ROUTER_LAN_V6 = "198.51.100.1", "2001:db8:10::1"
CP_V4, CP_V6 = "198.51.100.2", "2001:db8:10::2"
SERVICE_CIDRS = ("198.51.100.128/26", "2001:db8:ffff::/112")
KUBERNETES_SERVICE_IP = "198.51.100.129"
CLUSTER_CIDRS = ("203.0.113.128/25", "2001:db8:1::/48")
NODEPORT_RANGE = "30000-32767"
APISERVER_PORT = 6443
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str  # Kubernetes node name
    netns: str
    v4: str
    v6: str
    pod_v4: str
    pod_v6: str
    proxy_mode: ProxyMode
    cgroup: str  # kubelet's cgroupRoot, created in every cgroup v1 hierarchy


@dataclass(frozen=True, slots=True)
class ClientPlan:
    name: str
    netns: str
    v4: str
    v6: str
    router_v4: str
    router_v6: str
    prefix_v4: int
    prefix_v6: int
    router_dev: str


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    name: str
    router_netns: str
    cp_netns: str
    nodes: tuple[NodePlan, ...]
    clients: tuple[ClientPlan, ...]

    @property
    def prefix(self) -> str:
        """Every namespace and cgroup of this cluster starts with it (so `down` can sweep by name)."""
        return f"npgc-{self.name}-"

    @property
    def netns(self) -> tuple[str, ...]:
        return (
            self.router_netns,
            self.cp_netns,
            *(n.netns for n in self.nodes),
            *(c.netns for c in self.clients),
        )

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def client(self, name: str) -> ClientPlan:
        return next(c for c in self.clients if c.name == name)


def build_plan(name: str) -> ClusterPlan:
    """The fixed layout of cluster `name` (1-8 lowercase letters or digits, starting with a letter)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"cluster name {name!r}: use 1-8 lowercase letters or digits, starting with a letter")
    p = f"npgc-{name}-"
    nodes = (
        NodePlan("node1", p + "node1", "198.51.100.11", "2001:db8:10::11", "203.0.113.128/26", "2001:db8:1:1::/64",
                 "iptables", p + "node1"),
        NodePlan("node2", p + "node2", "198.51.100.12", "2001:db8:10::12", "203.0.113.192/26", "2001:db8:1:2::/64",
                 "nftables", p + "node2"),
    )
    clients = (
        ClientPlan("client-a", p + "cli-a", "198.51.100.70", "2001:db8:a::70", "198.51.100.65", "2001:db8:a::1",
                   26, 64, "cli-a"),
        ClientPlan("client-b", p + "cli-b", "203.0.113.10", "2001:db8:b::10", "203.0.113.1", "2001:db8:b::1",
                   25, 64, "cli-b"),
    )
    return ClusterPlan(name, p + "net", p + "cp", nodes, clients)
