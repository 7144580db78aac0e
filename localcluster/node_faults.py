"""Node-level faults of the local cluster, and the rule counts that judge them (I/O).

- `cut_off` / `reconnect`: a node loses the apiserver, both ways, by blackhole policy-routing rules
  inside the node's and the control plane's network namespaces (never the root namespace): TCP
  with the apiserver's port is dropped, so kubelet, kube-proxy, host-network pods (the enforcer)
  and the node's pods all lose it silently, as with a dropped route. Everything else (clients
  probing NodePorts, the apiserver calling webhook pods on that node) still flows. `down` deletes
  the namespaces and the rules with them, so a crashed test leaves nothing behind.
- `rule_counts` / `kube_nodeports`: what kube-proxy (KUBE-, or its nft table) and nodeport-guard
  (NPG-, its ipsets) have programmed on a node, read with the node's own tools.
- `ServiceChurn`: NodePort Services created and deleted in a loop, so kube-proxy really syncs.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from localcluster.cluster import Cluster
from localcluster.plan import APISERVER_PORT, CP_V4, CP_V6

logger = logging.getLogger(__name__)

CUT_PRIORITY = 77  # our ip rules' priority: before `main` (32766); found and removed by it


def _cut_rules(cluster: Cluster, node: str, port: int = APISERVER_PORT) -> list[tuple[str, list[str]]]:
    """(netns, `ip rule` selector) pairs that blackhole TCP between `node` and the apiserver.

    Each side drops what it would send (route lookups of sent and forwarded packets always see our
    rules; a received packet of an established connection may skip them through TCP early demux):
    the node what it sends to the apiserver, the control plane what the apiserver sends to the
    node's address and to its pods (pods reach the apiserver without NAT).
    """
    n = cluster.plan.node(node)
    cp = cluster.plan.cp_netns
    rules: list[tuple[str, list[str]]] = []
    for fam, server, host, pods in (("-4", f"{CP_V4}/32", f"{n.v4}/32", n.pod_v4),
                                    ("-6", f"{CP_V6}/128", f"{n.v6}/128", n.pod_v6)):
        rules.append((n.netns, [fam, "to", server, "ipproto", "tcp", "dport", str(port)]))
        rules.append((n.netns, [fam, "from", server, "ipproto", "tcp", "sport", str(port)]))
        for dst in (host, pods):
            rules.append((cp, [fam, "to", dst, "ipproto", "tcp", "sport", str(port)]))
    return rules


def _ip(netns: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"netns {netns}: ip {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def is_cut_off(cluster: Cluster, node: str) -> bool:
    out = _ip(cluster.plan.node(node).netns, ["-4", "rule", "show", "priority", str(CUT_PRIORITY)]).stdout
    return "blackhole" in out


def cut_off(cluster: Cluster, node: str) -> None:
    """From now on `node` (its host and its pods) and the apiserver cannot reach each other; idempotent."""
    if is_cut_off(cluster, node):
        return
    for netns, selector in _cut_rules(cluster, node):
        fam, rest = selector[0], selector[1:]
        _ip(netns, [fam, "rule", "add", "priority", str(CUT_PRIORITY), *rest, "blackhole"])
    logger.info("node cut off from the apiserver", extra={"node": node})


def reconnect(cluster: Cluster, node: str) -> None:
    """Undo `cut_off` (every rule of ours on either side, however many a crashed run left); idempotent."""
    for netns, selector in _cut_rules(cluster, node):
        fam, rest = selector[0], selector[1:]
        while _ip(netns, [fam, "rule", "del", "priority", str(CUT_PRIORITY), *rest], check=False).returncode == 0:
            pass
    logger.info("node reconnected to the apiserver", extra={"node": node})


@contextmanager
def cut_off_from_apiserver(cluster: Cluster, node: str) -> Iterator[None]:
    cut_off(cluster, node)
    try:
        yield
    finally:
        reconnect(cluster, node)


@dataclass(frozen=True, slots=True)
class RuleCounts:
    """Rules of each side on one node: kube-proxy's (iptables KUBE- chains and jumps, or rules in its
    nft tables) and nodeport-guard's (NPG- chains and jumps; its ipset members counted apart)."""

    kube: int
    npg: int
    npg_members: int


_SAVE_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save")


def _save_lines(cluster: Cluster, node: str) -> list[str]:
    lines: list[str] = []
    for tool in _SAVE_TOOLS:
        lines += cluster.on_node(node, [tool], check=False).stdout.splitlines()
    return lines


def _nft_tables(cluster: Cluster, node: str) -> dict[str, str]:
    """Native nft tables named kube-proxy (ip, ip6) -> their listing; the iptables-nft ones are left out."""
    out = {}
    for family in ("ip", "ip6"):
        proc = cluster.on_node(node, ["nft", "list", "table", family, "kube-proxy"], check=False)
        if proc.returncode == 0:
            out[family] = proc.stdout
    return out


def nft_rule_lines(listing: str) -> list[str]:
    """Pure: the rule lines of an `nft list table` listing (inside chains, not their type/policy header)."""
    rules, in_chain = [], False
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            in_chain = True
        elif line == "}":
            in_chain = False
        elif in_chain and line and not line.startswith(("type ", "comment ")):
            rules.append(line)
    return rules


def count_save_rules(lines: list[str], prefix: str) -> int:
    """Pure: rules in chains named `prefix`*, plus rules elsewhere jumping to such a chain."""
    return sum(1 for line in lines if line.startswith("-A ") and (
        line.split()[1].startswith(prefix) or f"-j {prefix}" in line or f"-g {prefix}" in line))


def _ipset_members(cluster: Cluster, node: str) -> int:
    out = cluster.on_node(node, ["ipset", "list"], check=False).stdout
    count, ours, in_members = 0, False, False
    for line in out.splitlines():
        if line.startswith("Name:"):
            ours, in_members = line.split(":", 1)[1].strip().lower().startswith("npg"), False
        elif line.startswith("Members:"):
            in_members = True
        elif in_members and ours and line.strip():
            count += 1
    return count


def rule_counts(cluster: Cluster, node: str) -> RuleCounts:
    lines = _save_lines(cluster, node)
    kube = count_save_rules(lines, "KUBE-") + sum(len(nft_rule_lines(t)) for t in _nft_tables(cluster, node).values())
    return RuleCounts(kube=kube, npg=count_save_rules(lines, "NPG-"), npg_members=_ipset_members(cluster, node))


# A NodePort's DNAT path (health-check node ports are plain ACCEPTs and are left out).
_SAVE_NODEPORT = re.compile(r"^-A KUBE-NODEPORTS .*-p (tcp|udp|sctp) .*--dport (\d+) .*-j KUBE-(?:EXT|SVC|SVL|XLB)-")
_NFT_NODEPORT = re.compile(r"\b(tcp|udp|sctp) \. (\d+) : goto ")
_NFT_NODEPORTS_MAP = re.compile(r"map service-nodeports \{(.*?)\n\s*\}", re.S)


def nodeports_from(save_lines: list[str], nft_listings: list[str]) -> set[tuple[str, int]]:
    """Pure: the (protocol, NodePort) pairs with a DNAT path in iptables-save lines or in the
    `service-nodeports` map of kube-proxy's nft tables."""
    ports = set()
    for line in save_lines:
        if m := _SAVE_NODEPORT.match(line):
            ports.add((m.group(1), int(m.group(2))))
    for listing in nft_listings:
        for block in _NFT_NODEPORTS_MAP.findall(listing):
            ports |= {(m.group(1), int(m.group(2))) for m in _NFT_NODEPORT.finditer(block)}
    return ports


def kube_nodeports(cluster: Cluster, node: str) -> set[tuple[str, int]]:
    """The (protocol, NodePort) pairs kube-proxy has programmed on `node`, in either mode, either family."""
    return nodeports_from(_save_lines(cluster, node), list(_nft_tables(cluster, node).values()))


def _service(name: str, namespace: str, selector: dict[str, str]) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"nodeport-guard.test/churn": "true"}},
        "spec": {"type": "NodePort", "selector": selector, "ipFamilyPolicy": "PreferDualStack",
                 "ports": [{"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })


@dataclass
class ServiceChurn:
    """Creates and deletes NodePort Services in `namespace` in a loop (a thread) until stopped.

    At most `keep` churn Services exist at a time; `live` is what exists now, as the apiserver
    answered (name -> NodePort), so a test can compare it with what kube-proxy programmed.
    """

    cluster: Cluster
    namespace: str
    selector: dict[str, str]
    keep: int = 6
    prefix: str = "churn"
    live: dict[str, int] = field(default_factory=dict)
    operations: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _create(self, n: int) -> None:
        name = f"{self.prefix}-{n}"
        proc = self.cluster.kubectl("create", "-f", "-", "-o", "json", stdin=_service(name, self.namespace,
                                                                                     self.selector), check=False)
        if proc.returncode == 0:
            self.live[name] = int(json.loads(proc.stdout)["spec"]["ports"][0]["nodePort"])
        else:
            self.errors.append(f"create {name}: {proc.stderr.strip()[:200]}")

    def _delete(self, name: str) -> None:
        proc = self.cluster.kubectl("-n", self.namespace, "delete", "service", name, "--wait=true", check=False)
        if proc.returncode == 0:
            self.live.pop(name, None)
        else:
            self.errors.append(f"delete {name}: {proc.stderr.strip()[:200]}")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if len(self.live) >= self.keep:
                self._delete(min(self.live, key=lambda s: int(s.rsplit("-", 1)[1])))
            else:
                self._create(n)
                n += 1
            self.operations += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="service-churn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def remove_all(self) -> None:
        self.cluster.kubectl("-n", self.namespace, "delete", "services", "-l", "nodeport-guard.test/churn=true",
                             "--wait=true", check=False)
        self.live.clear()


def wait_for(what: str, check: object, timeout: float, interval: float = 0.5) -> float:
    """Poll `check()` until truthy; the seconds it took. Raises TimeoutError naming `what`."""
    assert callable(check)
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not true after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started
