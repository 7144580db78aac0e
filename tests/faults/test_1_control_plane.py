"""Faults 1 and 2: the control plane under the product restarts, and watches expire for real.

1. kube-apiserver killed (SIGKILL) and restarted, then etcd killed and restarted, during a burst of
   200 policy creates/deletes: the webhook caches and the enforcers re-list, no update is lost.
2. Watch expiry: the apiserver is killed, etcd is compacted past every watcher's resourceVersion,
   the apiserver starts again with a fresh watch cache: every watcher's resume gets `410 Gone`
   ("too old resource version"), logs it, and re-lists; no update is lost.
"""

from __future__ import annotations

import time

from contract.signing import Signer
from localcluster.cluster import Cluster
from localcluster.faults import compact_etcd, restart_apiserver, restart_etcd
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.cluster_ops import ENFORCER, WEBHOOK, component_logs, pods, wait_for
from tests.faults.convergence import wait_converged
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable


def _relisted(cluster: Cluster, selector: str, since: float, kind: str, msg: str = "listed") -> dict[str, int]:
    """Per running pod of `selector`: how many `msg` log entries for `kind` it wrote since `since`."""
    counts = {p["metadata"]["name"]: 0 for p in pods(cluster, selector)}
    for line in component_logs(cluster, selector, since):
        if line.msg == msg and line.entry.get("kind") == kind:
            counts[line.pod] = counts.get(line.pod, 0) + 1
    return counts


def test_apiserver_and_etcd_restarted_during_a_burst_of_200_changes(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    name = cluster.plan.name
    with TrafficProber(cluster) as prober:
        churn = ChurnDriver(cluster, ops=200, live=15, pause=0.05, seed=1).start()
        wait_for("40 churn operations", lambda: churn.done >= 40, 180)
        api = restart_apiserver(name)
        wait_for("110 churn operations", lambda: churn.done >= 110, 240)
        etcd = restart_etcd(name)
        assert churn.wait(timeout=600), "the burst of 200 operations did not finish in 600 s"
        ended = time.time()
        converged = wait_converged(cluster, signer, timeout=180, since=ended)
        time.sleep(1)
    summary = prober.summary()
    relisted = {who: _relisted(cluster, selector, ended - 600, "networkpolicies")
                for who, selector in (("webhook", WEBHOOK), ("enforcer", ENFORCER))}
    failed_attempts = len(churn.failures())
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    fault_results.add(FaultResult(
        "1 apiserver + etcd restarted during 200 changes", summary.leak, summary.loss, converged.seconds,
        {"apiserver ready s": api.ready_s, "etcd ready s": etcd.ready_s, "failed attempts (retried)": failed_attempts,
         "churn ops": churn.done}))
    assert churn.abandoned == [], churn.abandoned
    assert churn.done == 200
    assert summary.denied_attempts > 100 and summary.allowed_answered > 100, summary.describe()
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
    # Each webhook replica and each enforcer listed the policies again after the restarts.
    for who, counts in relisted.items():
        assert counts and all(n >= 1 for n in counts.values()), (who, counts)


def test_watch_expiry_410_gone_relists_and_loses_no_update(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    name = cluster.plan.name
    compacted: list[int] = []
    with TrafficProber(cluster) as prober, ChurnDriver(cluster, live=10, pause=0.2, seed=2) as churn:
        wait_for("10 churn operations", lambda: churn.done >= 10, 120)
        killed = time.time()
        api = restart_apiserver(name, while_down=lambda: compacted.append(compact_etcd(name)))
        done = churn.done
        wait_for("20 more churn operations", lambda: churn.done >= done + 20, 180)
        churn.stop()
        ended = time.time()
        converged = wait_converged(cluster, signer, timeout=180, since=ended)
    summary = prober.summary()
    expired = {who: _relisted(cluster, selector, killed, "networkpolicies", "watch expired, relisting")
               for who, selector in (("webhook", WEBHOOK), ("enforcer", ENFORCER))}
    relisted = {who: _relisted(cluster, selector, killed, "networkpolicies")
                for who, selector in (("webhook", WEBHOOK), ("enforcer", ENFORCER))}
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    fault_results.add(FaultResult(
        "2 watch expiry (410 Gone) after etcd compaction", summary.leak, summary.loss, converged.seconds,
        {"compacted at revision": compacted[0] if compacted else None, "apiserver ready s": api.ready_s,
         "410 seen": {who: sum(c.values()) for who, c in expired.items()}}))
    assert churn.abandoned == [], churn.abandoned
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
    for who, counts in expired.items():
        assert counts and all(n >= 1 for n in counts.values()), (f"{who}: no 410 logged by every pod", counts)
    for who, counts in relisted.items():
        assert counts and all(n >= 1 for n in counts.values()), (f"{who}: did not re-list", counts)
