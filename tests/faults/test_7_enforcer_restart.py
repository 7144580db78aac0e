"""Fault 7: the enforcer DaemonSet's pods deleted, then a `kubectl rollout restart` of the DaemonSet,
while both clients probe both nodes.

No rule may disappear at any moment: a sampler reads both nodes' NPG rules and set members every
0.5 s and the fewest seen must equal what was there before; not one denied probe may get through,
not one allowed probe may fail.
"""

from __future__ import annotations

import time

from contract.signing import Signer
from localcluster.cluster import Cluster
from localcluster.node_faults import rule_counts, wait_for
from tests.faults.convergence import wait_converged
from tests.faults.node_checks import RuleSampler
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable

NS = "nodeport-guard"
DAEMONSET = "daemonset/nodeport-guard-enforcer"
SELECTOR = "app.kubernetes.io/name=nodeport-guard-enforcer"


def _pods(cluster: Cluster) -> dict[str, str]:
    """Enforcer pod name -> its node, for the pods that are Ready."""
    items = cluster.kubectl_json("-n", NS, "get", "pods", "-l", SELECTOR)["items"]
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))}


def test_enforcer_pods_deleted_and_rolled_keep_every_rule(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    wait_converged(cluster, signer, timeout=120)
    nodes = [n.name for n in cluster.plan.nodes]
    before = {n: rule_counts(cluster, n) for n in nodes}
    first = _pods(cluster)
    assert sorted(first.values()) == sorted(nodes), f"not one Ready enforcer per node: {first}"
    with TrafficProber(cluster) as prober, RuleSampler(cluster) as sampler:
        started = time.time()
        cluster.kubectl("-n", NS, "delete", "pods", "-l", SELECTOR, "--wait=true", timeout=120)
        cluster.kubectl("-n", NS, "rollout", "status", DAEMONSET, "--timeout=180s", timeout=200)
        replaced = time.time() - started
        second = _pods(cluster)
        rolled_at = time.time()
        cluster.kubectl("-n", NS, "rollout", "restart", DAEMONSET)
        cluster.kubectl("-n", NS, "rollout", "status", DAEMONSET, "--timeout=180s", timeout=200)
        rolled = time.time() - rolled_at
        wait_for("one Ready enforcer per node", lambda: len(_pods(cluster)) == len(nodes), 60)
        converged = wait_converged(cluster, signer, timeout=120, since=rolled_at)
        time.sleep(2)
    summary = prober.summary()
    least = {n: sampler.least(n) for n in nodes}
    fault_results.add(FaultResult(
        "7 enforcer pods deleted, then rollout restart", summary.leak, summary.loss, converged.seconds,
        {"delete->ready s": round(replaced, 1), "rollout s": round(rolled, 1),
         "rule samples": sum(sampler.count(n) for n in nodes),
         "probes": summary.allowed_attempts + summary.denied_attempts}))
    assert set(second).isdisjoint(first), f"the deleted pods are still there: {first} -> {second}"
    assert set(_pods(cluster)).isdisjoint(second), "rollout restart did not replace the pods"
    for n in nodes:
        assert sampler.count(n) >= 10, f"{n}: only {sampler.count(n)} rule samples"
        assert least[n].npg == before[n].npg and least[n].npg_members == before[n].npg_members, (
            f"{n}: our rules went from {before[n]} down to {least[n]} at some moment")
    assert summary.denied_attempts > 100 and summary.allowed_answered > 100, summary.describe()
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
