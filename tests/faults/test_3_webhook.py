"""Faults 3, 4 and 5: the webhook's own failures.

3. The webhook pod holding the reconciler Lease is deleted during a burst of policy changes: the
   other replica takes the Lease over (measured; target <= 15 s) and every policy ends correctly
   annotated and enforced.
4. Both webhook replicas down (failurePolicy Fail): `kubectl apply` of a policy fails naming the
   webhook, nothing is stored unannotated, the nodes keep their rules, and it all converges when the
   webhook is back.
5. Policies admitted while the webhook configurations are absent: the reconciler annotates them and
   the enforcers then enforce them; until then the NodePort is filtered as if the policy did not
   exist (measured: the window in which a newly denied client still gets through).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from contract.annotation import NODEPORTS_KEY
from contract.signing import Signer
from localcluster.backends import render_backends
from localcluster.cluster import Cluster
from tests.cluster.helpers import apply_policy, expect, matrix
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.cluster_ops import NS, WEBHOOK, lease_holder, logs_around, pods, wait_for
from tests.faults.conftest import ALLOW_A
from tests.faults.convergence import problems, wait_converged
from tests.faults.prober import TrafficProber, default_targets
from tests.faults.results import FaultResult, ResultTable

DEPLOYMENT = "deployment/nodeport-guard-webhook"
CONFIGURATIONS = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")
LATE_NS, LATE_PORT = "faults-late", 30090


def _leader_pod(cluster: Cluster) -> str:
    holder = lease_holder(cluster)
    names = [str(p["metadata"]["name"]) for p in pods(cluster, WEBHOOK)]
    found = [n for n in names if holder.startswith(n + "-")]
    assert found, f"Lease holder {holder!r} is none of the webhook pods {names}"
    return found[0]


def _held_by_another(cluster: Cluster, pod: str) -> bool:
    holder = lease_holder(cluster)  # empty while released and not yet taken
    return bool(holder) and not holder.startswith(pod + "-")


def test_deleting_the_lease_holder_during_a_burst_hands_over_within_15s(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    wait_for("a reconciler leader", lambda: bool(lease_holder(cluster)), 60)
    leader = _leader_pod(cluster)
    with TrafficProber(cluster) as prober:
        churn = ChurnDriver(cluster, ops=150, live=15, pause=0.05, seed=3).start()
        wait_for("20 churn operations", lambda: churn.done >= 20, 120)
        deleted = time.time()
        cluster.kubectl("delete", "pod", "-n", NS, leader, "--wait=false")
        takeover_s = wait_for("another webhook pod holds the Lease",
                              lambda: _held_by_another(cluster, leader), 120, interval=0.1)
        new_holder = lease_holder(cluster)
        assert churn.wait(timeout=600), "the burst did not finish"
        ended = time.time()
        converged = wait_converged(cluster, signer, timeout=180, since=ended)
    cluster.kubectl("rollout", "status", "-n", NS, DEPLOYMENT, "--timeout=180s", timeout=200)
    summary = prober.summary()
    failed = churn.failures()
    delete_churn(cluster)
    fault_results.add(FaultResult(
        "3 Lease holder deleted during a burst", summary.leak, summary.loss, converged.seconds,
        {"takeover s": round(takeover_s, 1), "failed admissions (retried)": len(failed), "churn ops": churn.done}))
    assert new_holder and not new_holder.startswith(leader + "-")
    assert churn.abandoned == [], churn.abandoned
    assert summary.leak == 0 and summary.loss == 0, (
        f"{summary.describe()}; losses at {[round(r.t - deleted, 2) for r in summary.losses]} s after the delete; "
        f"enforcers meanwhile: {logs_around(cluster, [r.t for r in summary.losses])}")
    assert takeover_s <= 15, f"Lease takeover took {takeover_s:.1f}s (target 15 s)"
    assert failed == [], [f"{o.op} {o.name}: {o.error[:300]}" for o in failed[:3]]


def test_both_webhook_replicas_down_refuses_writes_keeps_rules_and_converges_after(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable
) -> None:
    replicas = cluster.kubectl_json("get", "-n", NS, DEPLOYMENT)["spec"]["replicas"]
    with TrafficProber(cluster) as prober:
        cluster.kubectl("scale", "-n", NS, DEPLOYMENT, "--replicas=0")
        wait_for("no webhook pod left", lambda: pods(cluster, WEBHOOK) == [], 120, interval=0.5)
        refused = apply_policy(cluster, "while-webhook-down", [{"from": [{"ipBlock": {"cidr": "203.0.113.0/25"}}]}])
        stored = cluster.kubectl("get", "networkpolicy", "-n", "demo", "while-webhook-down", check=False)
        update = cluster.kubectl("annotate", "networkpolicy", "-n", "demo", baseline, "faults/touched=1", check=False)
        rules_kept = problems(cluster, signer)  # the nodes still enforce what is stored
        time.sleep(10)  # probes keep running with no webhook at all
        back = time.time()
        cluster.kubectl("scale", "-n", NS, DEPLOYMENT, f"--replicas={replicas}")
        cluster.kubectl("rollout", "status", "-n", NS, DEPLOYMENT, "--timeout=180s", timeout=200)
        serving_s = time.time() - back
        retried = wait_for("the refused policy is admitted once the webhook is back", lambda: apply_policy(
            cluster, "while-webhook-down", [{"from": [{"ipBlock": {"cidr": "198.51.100.160/27"}}]}]).returncode == 0,
            60, interval=0.5)
        converged = wait_converged(cluster, signer, timeout=180, since=back)
    summary = prober.summary()
    cluster.kubectl("delete", "networkpolicy", "-n", "demo", "while-webhook-down")
    fault_results.add(FaultResult(
        "4 both webhook replicas down (failurePolicy Fail)", summary.leak, summary.loss, converged.seconds,
        {"webhook back in s": round(serving_s, 1), "first write accepted after s": round(serving_s + retried, 1)}))
    assert refused.returncode != 0
    assert "mutate.nodeport-guard.io" in refused.stderr or "validate.nodeport-guard.io" in refused.stderr, \
        refused.stderr
    assert stored.returncode != 0 and "NotFound" in stored.stderr, stored.stdout
    assert update.returncode != 0 and "nodeport-guard.io" in update.stderr, update.stderr
    assert rules_kept == [], rules_kept
    assert summary.leak == 0 and summary.loss == 0, summary.describe()


def _late_backends() -> str:
    """The demo echo DaemonSet and its NodePort Service, in a namespace of their own on nodePort 30090."""
    items = json.loads(render_backends())["items"]
    chosen: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LATE_NS}}]
    for item in items:
        if item["kind"] == "DaemonSet" or (item["kind"] == "Service" and item["metadata"]["name"] == "echo"):
            item["metadata"]["namespace"] = LATE_NS
            for port in item["spec"].get("ports", []):
                if "nodePort" in port:
                    port["nodePort"] = LATE_PORT
            chosen.append(item)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": chosen})


@pytest.fixture
def late_namespace(cluster: Cluster, baseline: str) -> Iterator[str]:
    cluster.kubectl("apply", "-f", "-", stdin=_late_backends())
    cluster.kubectl("-n", LATE_NS, "rollout", "status", "daemonset/echo", "--timeout=120s", timeout=150)
    expect(cluster, "client-b", matrix(cluster, [LATE_PORT]), answered=True, timeout=60)
    yield LATE_NS
    cluster.kubectl("delete", "namespace", LATE_NS, "--wait=true", timeout=300)


@pytest.fixture
def configurations_removed(cluster: Cluster) -> Iterator[list[dict[str, Any]]]:
    saved: list[dict[str, Any]] = []
    for kind in CONFIGURATIONS:
        obj = cluster.kubectl_json("get", kind, "nodeport-guard")
        for name in SERVER_FIELDS:
            obj["metadata"].pop(name, None)
        saved.append(obj)
    try:
        yield saved
    finally:
        for kind, obj in zip(CONFIGURATIONS, saved, strict=True):
            if cluster.kubectl("get", kind, "nodeport-guard", check=False).returncode != 0:
                cluster.kubectl("create", "-f", "-", stdin=json.dumps(obj))


def _annotated(cluster: Cluster, namespace: str, name: str) -> bool:
    got = cluster.kubectl_json("get", "networkpolicy", "-n", namespace, name)
    return NODEPORTS_KEY in (got["metadata"].get("annotations") or {})


def test_policies_admitted_without_the_webhook_are_annotated_then_enforced(
    cluster: Cluster, baseline: str, signer: Signer, late_namespace: str,
    configurations_removed: list[dict[str, Any]], fault_results: ResultTable,
) -> None:
    targets = default_targets(cluster) + default_targets(cluster, port=LATE_PORT)
    for kind in CONFIGURATIONS:
        cluster.kubectl("delete", kind, "nodeport-guard")
    time.sleep(2)  # the apiserver's webhook configuration informer catches up
    with TrafficProber(cluster, targets=targets) as prober:
        time.sleep(2)
        created = time.time()
        body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "admitted-without-webhook", "namespace": late_namespace},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ALLOW_A}}
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(body))
        annotated_s = wait_for("the reconciler annotates the policy",
                               lambda: _annotated(cluster, late_namespace, "admitted-without-webhook"), 120, 0.1)
        converged = wait_converged(cluster, signer, timeout=180, since=created)
        enforced = created + converged.seconds
        time.sleep(3)
    late = [r for r in prober.snapshot() if r.target.port == LATE_PORT and r.t >= created]
    window_leaks = [r for r in late if r.expect == "denied" and r.answered and r.t <= enforced]
    summary = prober.summary(windows=[(created, enforced)], since=created)
    for obj in configurations_removed:
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(obj))
    fault_results.add(FaultResult(
        "5 policy admitted without webhook configurations", summary.leak, summary.loss, converged.seconds,
        {"annotated after s": round(annotated_s, 2), "enforced after s": converged.seconds,
         "denied probes answered meanwhile": len(window_leaks)}))
    assert summary.leak == 0 and summary.loss == 0, summary.describe()
    assert annotated_s <= 60, annotated_s  # at the latest one full resync (NPG_RESYNC_SECONDS=60)
