"""Stop a whole local cluster and start it again on the same data directories (I/O).

`stop` kills every process of the cluster (the control plane, the relay, each node's mount
namespace holder, containerd and its shims, kubelet, kube-proxy and every container), as a power
cut would; the network namespaces, cgroups and the work directory (etcd's data, containerd's
image store, kubelet's root, the PKI) stay. With `reboot_nodes`, each node's netfilter state
(iptables legacy and nft, nft tables, ipsets, conntrack) is also flushed inside its own namespace, as after
a machine's reboot. `start` brings every daemon back from those directories, as a boot would.
`down` still removes everything at any point.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable

from localcluster import cluster as lc
from localcluster.build import ensure_binaries, ensure_node_binaries
from localcluster.controlplane import Pki, start_control_plane
from localcluster.network import in_netns, run
from localcluster.node import start_agents, start_runtime
from localcluster.plan import build_plan
from localcluster.procs import wait_until
from localcluster.state import State, _cgroup_pids, _kill, _netns_pids, _zombie, cgroup_dirs

logger = logging.getLogger(__name__)

_FLUSH = (
    ["iptables-legacy-restore"], ["ip6tables-legacy-restore"], ["iptables-nft-restore"], ["ip6tables-nft-restore"],
)
_EMPTY_TABLES = "".join(f"*{t}\nCOMMIT\n" for t in ("raw", "mangle", "nat", "filter"))


def _victims(state: State) -> set[int]:
    """The cluster's processes: recorded ones, those in its machines' namespaces and cgroups. Client
    namespaces are not machines of the cluster: what runs there (a test's probes) keeps running."""
    plan = build_plan(state.name)
    pids = {p.pid for p in state.procs}
    for ns in (plan.router_netns, plan.cp_netns, *(n.netns for n in plan.nodes)):
        pids |= _netns_pids(ns)
    for top in cgroup_dirs(state.prefix):
        pids |= _cgroup_pids(top)
    return {p for p in pids if p != os.getpid() and not _zombie(p)}


def flush_netfilter(netns: str) -> None:
    """A rebooted host's netfilter: every table of both iptables backends empty (built-in chains
    only), no nft table, no ipset, no conntrack entry; inside `netns` only."""
    for tool in _FLUSH:
        subprocess.run(in_netns(netns, tool), input=_EMPTY_TABLES, capture_output=True, text=True, check=False,
                       timeout=60)
    run(in_netns(netns, ["nft", "flush", "ruleset"]), check=False)
    run(in_netns(netns, ["ipset", "destroy"]), check=False)
    run(in_netns(netns, ["conntrack", "-F"]), check=False)


def stop(name: str, reboot_nodes: bool = False) -> float:
    """Kill every process of cluster `name` (SIGKILL, as a power cut); returns the seconds it took."""
    started = time.monotonic()
    state = State.load(name)
    if state is None:
        raise lc.PrerequisiteError(f"no local cluster named {name!r} is up")
    for _ in range(20):
        victims = _victims(state)
        if not victims:
            break
        _kill(victims)
        time.sleep(0.3)
    state.procs = []
    state.ready = False
    state.apiserver_url = ""
    state.save()
    if reboot_nodes:
        for node in build_plan(name).nodes:
            flush_netfilter(node.netns)
    logger.info("cluster stopped", extra={"cluster": name, "reboot_nodes": reboot_nodes})
    return time.monotonic() - started


def start(name: str, timeout: float = 180,
          before_nodes: Callable[[lc.Cluster], None] | None = None) -> lc.Cluster:
    """Start every daemon of a stopped cluster again from its directories; returns its new handle.

    `before_nodes` runs once the control plane serves and before any node starts (no pod can run):
    what a cluster must allow before its add-ons are back, e.g. writes the webhook must not block.
    """
    state = State.load(name)
    if state is None:
        raise lc.PrerequisiteError(f"no local cluster named {name!r} (state file gone); bring it up with `up`")
    plan = build_plan(name)
    state.starter_pid = os.getpid()
    state.save()
    pki = Pki(state.dir / "pki")
    url = start_control_plane(state, plan, ensure_binaries(), ensure_node_binaries(), pki)
    state.apiserver_url = url
    state.save()
    kubeconfig = state.dir / "kubeconfig"
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = url
    kubeconfig.write_text(json.dumps(config, indent=1))
    if before_nodes is not None:
        before_nodes(lc.Cluster(plan, state.dir, ensure_binaries().kubectl, {}))
    kubeconfigs = state.dir / "kubeconfigs"
    for n in plan.nodes:  # a dead containerd's sockets would pass for a live one's
        for leftover in ("containerd.sock", "containerd.ttrpc.sock"):
            (state.dir / n.name / leftover).unlink(missing_ok=True)
    runtimes = {n.name: start_runtime(state, n, kubeconfigs, pki["ca.crt"]) for n in plan.nodes}
    for n in plan.nodes:
        sock = state.dir / n.name / "containerd.sock"
        wait_until(f"{n.name} containerd", sock.exists, 60, runtimes[n.name][1],
                   state.dir / n.name / "logs" / "containerd.log")
    node_bins = ensure_node_binaries()
    for n in plan.nodes:
        start_agents(state, n, runtimes[n.name][0], node_bins, kubeconfigs)
    cluster = lc.attach(name)
    lc._wait_ready(cluster, timeout)
    state = State.load(name) or state
    state.ready = True
    state.save()
    logger.info("cluster started again", extra={"cluster": name, "apiserver": url})
    return cluster
