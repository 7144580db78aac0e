"""Network namespaces, veths, addresses and routes of the local cluster, all inside its own namespaces (I/O).

Every link is created from inside a namespace of ours (`ip -n NS link add ... peer ... netns
OTHER`), so nothing ever appears in the root namespace; sysctls written here are per-namespace
(`net.*`), entered with nsenter.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from localcluster.plan import (
    CP_V4,
    CP_V6,
    LAN_V4,
    LAN_V6,
    ROUTER_LAN_V4,
    ROUTER_LAN_V6,
    ClusterPlan,
)

logger = logging.getLogger(__name__)


class NetworkError(RuntimeError):
    """A namespace, link, address or route could not be set up."""


def run(argv: Sequence[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside network namespace `netns` (nsenter, not `ip netns exec`)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def sysctl(netns: str, key: str, value: str) -> None:
    run(in_netns(netns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def _prefix_len(cidr: str) -> str:
    return cidr.split("/")[1]


def _ip(netns: str, *args: str) -> None:
    run(["ip", "-n", netns, *args])


def _veth(ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
    run(["ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b])
    _ip(ns_a, "link", "set", dev_a, "up")
    _ip(ns_b, "link", "set", dev_b, "up")


def _addr(netns: str, dev: str, v4: str, v6: str) -> None:
    _ip(netns, "addr", "add", v4, "dev", dev)
    _ip(netns, "-6", "addr", "add", v6, "dev", dev, "nodad")


def _forwarding(netns: str) -> None:
    sysctl(netns, "net.ipv4.ip_forward", "1")
    sysctl(netns, "net.ipv6.conf.all.forwarding", "1")


def create_network(plan: ClusterPlan) -> None:
    """Create every namespace of the plan and wire them up. Raises NetworkError; `down` cleans up."""
    for ns in plan.netns:
        run(["ip", "netns", "add", ns])
        _ip(ns, "link", "set", "lo", "up")
        # Answer on IPv6 right away and never send router solicitations out of our links.
        sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
    router = plan.router_netns
    _forwarding(router)
    _ip(router, "link", "add", "lan", "type", "bridge")
    _ip(router, "link", "set", "lan", "up")
    _addr(router, "lan", f"{ROUTER_LAN_V4}/{_prefix_len(LAN_V4)}", f"{ROUTER_LAN_V6}/{_prefix_len(LAN_V6)}")
    hosts = [(plan.cp_netns, "v-cp", CP_V4, CP_V6), *((n.netns, f"v-{n.name}", n.v4, n.v6) for n in plan.nodes)]
    for ns, dev, v4, v6 in hosts:
        _veth(router, dev, ns, "eth0")
        _ip(router, "link", "set", dev, "master", "lan")
        _addr(ns, "eth0", f"{v4}/{_prefix_len(LAN_V4)}", f"{v6}/{_prefix_len(LAN_V6)}")
        _ip(ns, "route", "add", "default", "via", ROUTER_LAN_V4)
        _ip(ns, "-6", "route", "add", "default", "via", ROUTER_LAN_V6)
    for node in plan.nodes:
        _forwarding(node.netns)
        # Pods are reached through the node that hosts them; the router, the control plane and the
        # other nodes route there directly (the control plane dials webhook pods by their IP).
        for ns in (router, plan.cp_netns, *(n.netns for n in plan.nodes if n is not node)):
            _ip(ns, "route", "add", node.pod_v4, "via", node.v4)
            _ip(ns, "-6", "route", "add", node.pod_v6, "via", node.v6)
    for client in plan.clients:
        _veth(router, client.router_dev, client.netns, "eth0")
        _addr(router, client.router_dev, f"{client.router_v4}/{client.prefix_v4}",
              f"{client.router_v6}/{client.prefix_v6}")
        _addr(client.netns, "eth0", f"{client.v4}/{client.prefix_v4}", f"{client.v6}/{client.prefix_v6}")
        _ip(client.netns, "route", "add", "default", "via", client.router_v4)
        _ip(client.netns, "-6", "route", "add", "default", "via", client.router_v6)
    logger.info("network of cluster %s ready: %s", plan.name, ", ".join(plan.netns))
