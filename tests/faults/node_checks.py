"""What the node-fault tests read from a node: the enforcer's readiness, kube-proxy's sync count,
and a sampler of both sides' rule counts while a fault runs (I/O)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from localcluster.cluster import Cluster
from localcluster.node_faults import RuleCounts, rule_counts

ENFORCER_METRICS_PORT = 9911
KUBE_PROXY_METRICS = "http://127.0.0.1:10249/metrics"


def http_status(cluster: Cluster, node: str, url: str) -> tuple[int, str]:
    """GET `url` from inside `node` (its namespaces): (status code, body); (0, why) when nothing answered."""
    proc = cluster.on_node(node, ["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}", url], check=False)
    body, _, code = proc.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), (body or proc.stderr).strip()


def enforcer_readyz(cluster: Cluster, node: str) -> tuple[int, str]:
    """The node's enforcer /readyz, as kubelet's readiness probe sees it (host network, node address)."""
    return http_status(cluster, node, f"http://{cluster.plan.node(node).v4}:{ENFORCER_METRICS_PORT}/readyz")


def kube_proxy_syncs(cluster: Cluster, node: str) -> int:
    """How many rule syncs kube-proxy on `node` has done (its sync-duration histogram's count)."""
    _, text = http_status(cluster, node, KUBE_PROXY_METRICS)
    m = re.search(r"^kubeproxy_sync_proxy_rules_duration_seconds_count(?:\{[^}]*\})? (\d+)", text, re.M)
    if m is None:
        raise AssertionError(f"{node}: kube-proxy metrics have no sync count: {text[:300]}")
    return int(m.group(1))


@dataclass
class RuleSampler:
    """Reads both sides' rule counts on every node about every `interval` s in a thread, while a fault runs."""

    cluster: Cluster
    interval: float = 0.5
    samples: dict[str, list[tuple[float, RuleCounts]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.cluster.plan.nodes:
                counts = rule_counts(self.cluster, node.name)
                self.samples.setdefault(node.name, []).append((time.time(), counts))
            self._stop.wait(self.interval)

    def __enter__(self) -> RuleSampler:
        self._thread = threading.Thread(target=self._run, name="rule-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def least(self, node: str) -> RuleCounts:
        """The fewest rules of each side seen on `node` (each field's minimum over the samples)."""
        seen = [c for _, c in self.samples.get(node, [])]
        assert seen, f"{node}: no rule sample taken"
        return RuleCounts(min(c.kube for c in seen), min(c.npg for c in seen), min(c.npg_members for c in seen))

    def count(self, node: str) -> int:
        return len(self.samples.get(node, []))
