"""Fault 10: a concurrent writer. kube-proxy on the same nodes really syncing while NodePort Services
are created and deleted, and the enforcers syncing while NetworkPolicies are created and deleted, at
the same time (node1's kube-proxy writes iptables, node2's nftables; ours share node1's xtables lock).

No rule of either side may be lost: during the churn, every backend NodePort stays programmed by
kube-proxy and our NPG rules never drop below what they were; after it, kube-proxy's NodePorts are
exactly the stored Services', our sets exactly the plan of the stored annotations, and once the churn
objects are gone both sides' rule counts are back to what they were before.
"""

from __future__ import annotations

import time

from contract.signing import Signer
from localcluster.backends import APP, NAMESPACE, SERVICES
from localcluster.cluster import Cluster
from localcluster.node_faults import ServiceChurn, kube_nodeports, rule_counts, wait_for
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.convergence import wait_converged
from tests.faults.node_checks import RuleSampler, kube_proxy_syncs
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable

CHURN_SECONDS = 60
BACKEND_PORTS = {(proto, s.node_port) for s in SERVICES for proto in ("tcp", "udp")}


def stored_nodeports(cluster: Cluster) -> set[tuple[str, int]]:
    """(protocol, NodePort) of every stored Service that has NodePorts."""
    items = cluster.kubectl_json("get", "services", "-A")["items"]
    return {(p["protocol"].lower(), int(p["nodePort"])) for s in items for p in s["spec"].get("ports", [])
            if p.get("nodePort")}


def test_kube_proxy_and_enforcer_churning_together_lose_no_rule(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    nodes = [n.name for n in cluster.plan.nodes]
    wait_converged(cluster, signer, timeout=120)
    for n in nodes:
        wait_for(f"{n}: kube-proxy programs the stored NodePorts",
                 lambda n=n: kube_nodeports(cluster, n) == stored_nodeports(cluster), 60)
    before = {n: rule_counts(cluster, n) for n in nodes}
    syncs_before = {n: kube_proxy_syncs(cluster, n) for n in nodes}
    missing_backend: list[str] = []
    services = ServiceChurn(cluster, NAMESPACE, {"app": APP}, keep=6)
    with TrafficProber(cluster) as prober, RuleSampler(cluster, interval=1.0) as sampler:
        started = time.time()
        services.start()
        with ChurnDriver(cluster, live=6, pause=0.5, seed=10) as policies:
            while time.time() < started + CHURN_SECONDS:
                for n in nodes:
                    lost = BACKEND_PORTS - kube_nodeports(cluster, n)
                    if lost:
                        missing_backend.append(f"{time.time() - started:.1f}s {n}: {sorted(lost)}")
                time.sleep(1)
        services.stop()
        stopped = time.time()
        converged = wait_converged(cluster, signer, timeout=120, since=stopped)
        for n in nodes:
            wait_for(f"{n}: kube-proxy programs exactly the stored NodePorts",
                     lambda n=n: kube_nodeports(cluster, n) == stored_nodeports(cluster), 60)
        time.sleep(1)
    summary = prober.summary()
    syncs = {n: kube_proxy_syncs(cluster, n) - syncs_before[n] for n in nodes}
    least = {n: sampler.least(n) for n in nodes}
    services.remove_all()
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    for n in nodes:
        wait_for(f"{n}: kube-proxy back to the stored NodePorts",
                 lambda n=n: kube_nodeports(cluster, n) == stored_nodeports(cluster), 60)
    after = {n: rule_counts(cluster, n) for n in nodes}
    fault_results.add(FaultResult(
        "10 kube-proxy and enforcer writing together", summary.leak, summary.loss, converged.seconds,
        {"service ops": services.operations, "policy ops": policies.done,
         "policy writes refused": len(policies.failures()),
         **{f"{n} kube-proxy syncs": syncs[n] for n in nodes},
         **{f"{n} KUBE/NPG rules": f"{before[n].kube}/{before[n].npg}" for n in nodes}}))
    assert services.errors == [], services.errors[:3]
    # A create whose mutation and validation saw different Services (one created or deleted in
    # between) keeps its signed part; the reconciler brings it up to date (docs/operations.md).
    assert policies.failures() == [], policies.failures()[:3]
    assert services.operations >= 20, f"only {services.operations} Service operations in {CHURN_SECONDS} s"
    for n in nodes:
        assert syncs[n] >= 10, f"{n}: kube-proxy synced only {syncs[n]} times during the churn"
    assert missing_backend == [], f"kube-proxy's backend NodePorts went missing: {missing_backend[:5]}"
    for n in nodes:
        assert least[n].npg == before[n].npg, f"{n}: our rules dropped from {before[n].npg} to {least[n].npg}"
        assert after[n] == before[n], f"{n}: rules before the churn {before[n]}, after it {after[n]}"
    assert summary.denied_attempts > 100 and summary.allowed_answered > 100, summary.describe()
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
