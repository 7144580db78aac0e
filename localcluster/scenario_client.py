"""A scenario client namespace: any set of source addresses, wired straight to every node (I/O).

The fixed clients (client-a, client-b) sit behind the router on their own subnets. Packet tests of
the shared NetworkPolicy scenarios need sources anywhere in the documentation ranges, several of
them inside the cluster's own subnets (the LAN's broadcast address, the router's address, the
client subnets), which the router cannot forward to a third namespace. So the scenario client
namespace `npgc-<cluster>-scen` holds every source (/32, /128 on its loopback) and has one veth to
each node (`scen0` on the node side). On each node a routing table of its own (SCENARIO_TABLE,
one /32 or /128 route per source via `scen0`) is looked up first (rule SCENARIO_RULE_PREF, the
IPv4 `local` rule moved after it so that a source equal to the LAN's broadcast address is routed
like any other), so replies, including those kube-proxy de-NATs on their way back from a pod, go
back to the client. Neighbours are static both ways: no ARP or ND timing in any result.

What enters the node is a normal packet to the node's own address on an interface that is not the
pod bridge, so it meets the same mangle PREROUTING hook, kube-proxy DNAT and masquerade as traffic
from the LAN. `detach` restores the node's rules; `localcluster down` sweeps the namespace by its
name prefix like every other namespace of the cluster, and deleting it removes the veths and routes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.network import NetworkError, run
from localcluster.plan import CP_V4, CP_V6, KUBERNETES_SERVICE_IP, ClusterPlan

logger = logging.getLogger(__name__)

SCENARIO_TABLE = "20198"
SCENARIO_RULE_PREF = "50"
LOCAL_RULE_PREF = "60"  # where the IPv4 `local` rule lives while the client is attached (it is 0 otherwise)
NODE_DEV = "scen0"


@dataclass(frozen=True, slots=True)
class ScenarioClient:
    netns: str
    sources: tuple[str, ...]
    node_devs: dict[str, str]  # node name -> the client's device towards that node


def scenario_netns(plan: ClusterPlan) -> str:
    return f"{plan.prefix}scen"


def _prefix(address: str) -> str:
    return f"{address}/{32 if ipaddress.ip_address(address).version == 4 else 128}"


def check_sources(plan: ClusterPlan, sources: Sequence[str]) -> None:
    """Refuse a source the cluster itself needs to reach (a node, the control plane, a pod network)."""
    infrastructure = {CP_V4, CP_V6, KUBERNETES_SERVICE_IP, *(a for n in plan.nodes for a in (n.v4, n.v6))}
    pod_nets = [ipaddress.ip_network(c) for n in plan.nodes for c in (n.pod_v4, n.pod_v6)]
    for source in sources:
        address = ipaddress.ip_address(source)
        if source in infrastructure or any(address in net for net in pod_nets):
            raise ValueError(
                f"scenario source {source}: it is an address or pod network the cluster uses itself; "
                "routing it to the scenario client would cut the cluster off, pick another source"
            )


def _mac(netns: str, dev: str) -> str:
    return run(["ip", "-n", netns, "-br", "link", "show", "dev", dev]).stdout.split()[2]


def _batch(netns: str, lines: Sequence[str]) -> None:
    """Many `ip` commands in one process (`ip -batch -`: the lines are its data, no shell is involved)."""
    result = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise NetworkError(f"ip -n {netns} -batch: {result.stderr.strip()}")


def attach(plan: ClusterPlan, sources: Sequence[str]) -> ScenarioClient:
    """Create the scenario client holding `sources`, wired to every node. Raises NetworkError or ValueError."""
    check_sources(plan, sources)
    ns = scenario_netns(plan)
    if Path(f"/run/netns/{ns}").exists():
        raise NetworkError(f"{ns} already exists: detach it first (or `python -m localcluster down`)")
    client = ScenarioClient(ns, tuple(sources), {n.name: f"to-{n.name}"[:15] for n in plan.nodes})
    try:
        run(["ip", "netns", "add", ns])
        lines = ["link set lo up"]
        lines += [f"addr add {_prefix(s)} dev lo{' nodad' if ':' in s else ''}" for s in sources]
        _batch(ns, lines)
        for node in plan.nodes:
            dev = client.node_devs[node.name]
            run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", NODE_DEV, "netns", node.netns])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", node.netns, "link", "set", NODE_DEV, "up"])
            node_mac, client_mac = _mac(node.netns, NODE_DEV), _mac(ns, dev)
            _batch(ns, [
                *(f"route add {_prefix(a)} dev {dev}" for a in (node.v4, node.v6)),
                *(f"neigh replace {a} lladdr {node_mac} dev {dev} nud permanent" for a in (node.v4, node.v6)),
            ])
            _batch(node.netns, [
                *(f"route add {_prefix(s)} dev {NODE_DEV} table {SCENARIO_TABLE}" for s in sources),
                *(f"neigh replace {s} lladdr {client_mac} dev {NODE_DEV} nud permanent" for s in sources),
            ])
            rules = (("-4", SCENARIO_RULE_PREF, SCENARIO_TABLE), ("-6", SCENARIO_RULE_PREF, SCENARIO_TABLE),
                     ("-4", LOCAL_RULE_PREF, "local"))
            for family, pref, table in rules:
                run(["ip", "-n", node.netns, family, "rule", "add", "pref", pref, "lookup", table])
            run(["ip", "-n", node.netns, "-4", "rule", "del", "pref", "0", "lookup", "local"])
    except BaseException:
        detach(plan)
        raise
    logger.info("scenario client %s attached to %s with %d sources", ns, ", ".join(client.node_devs), len(sources))
    return client


def _has_rule(netns: str, family: str, pref: str, table: str) -> bool:
    rules = run(["ip", "-n", netns, family, "rule", "show"], check=False).stdout.splitlines()
    return any(line.startswith(f"{pref}:") and line.rstrip().endswith(f"lookup {table}") for line in rules)


def detach(plan: ClusterPlan) -> list[str]:
    """Remove the scenario client and restore every node's rules; returns what could not be done."""
    problems: list[str] = []
    for node in plan.nodes:
        if not Path(f"/run/netns/{node.netns}").exists():
            continue
        if not _has_rule(node.netns, "-4", "0", "local"):
            run(["ip", "-n", node.netns, "-4", "rule", "add", "pref", "0", "lookup", "local"], check=False)
        for family, pref, table in (("-4", LOCAL_RULE_PREF, "local"), ("-4", SCENARIO_RULE_PREF, SCENARIO_TABLE),
                                    ("-6", SCENARIO_RULE_PREF, SCENARIO_TABLE)):
            while _has_rule(node.netns, family, pref, table):
                if run(["ip", "-n", node.netns, family, "rule", "del", "pref", pref, "lookup", table],
                       check=False).returncode != 0:
                    problems.append(f"{node.name}: could not delete rule {family} pref {pref} lookup {table}")
                    break
        run(["ip", "-n", node.netns, "link", "del", NODE_DEV], check=False)
    ns = scenario_netns(plan)
    if Path(f"/run/netns/{ns}").exists():
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            problems.append(f"netns {ns}: {proc.stderr.strip()}")
    return problems


@contextlib.contextmanager
def scenario_client(plan: ClusterPlan, sources: Sequence[str]) -> Iterator[ScenarioClient]:
    client = attach(plan, sources)
    try:
        yield client
    finally:
        problems = detach(plan)
        if problems:
            raise NetworkError("; ".join(problems))
