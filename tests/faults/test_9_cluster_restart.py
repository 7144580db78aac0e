"""Fault 9: the whole cluster stopped (every process killed, as a power cut: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd and every container, kubelets, kube-proxies) and
started again on the same data directories, while both clients keep probing.

Nobody helps it back: no deadlock on the webhook's own namespace or kube-system (the webhook
configurations exempt both, and NetworkPolicies there are admitted while the webhook is not serving
yet), the webhook and enforcers come back by themselves, new policies are admitted and enforced,
and once the enforcers are ready again nothing leaks and nothing is lost. During the outage
allowed probes fail (the backends are down too): that window is measured, not counted as loss.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from contract.signing import Signer
from localcluster import restart
from localcluster.backends import APP, NAMESPACE
from localcluster.cluster import Cluster
from localcluster.node_faults import wait_for
from tests.faults.churn import ChurnDriver, delete_churn
from tests.faults.cluster_ops import logs_around
from tests.faults.convergence import wait_converged
from tests.faults.diagnose import SliceRecorder, neighbours, node_log_near
from tests.faults.node_checks import enforcer_readyz
from tests.faults.prober import TrafficProber
from tests.faults.results import FaultResult, ResultTable

NS = "nodeport-guard"
EXEMPT = {"nodeport-guard", "kube-system"}
UDP_CONNTRACK_SECONDS = 30  # nf_conntrack_udp_timeout: a probe reusing a port rides an entry this long
RECOVERY_BOUND = 240  # seconds from the start until both webhook replicas and both enforcers are ready


def _exempt_namespaces(webhook: dict[str, Any]) -> set[str]:
    """Namespaces a webhook's namespaceSelector leaves out (NotIn on kubernetes.io/metadata.name)."""
    selector = webhook.get("namespaceSelector") or {}
    return {v for e in selector.get("matchExpressions", [])
            if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn" for v in e["values"]}


def _inert_policy(namespace: str) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "faults-after-restart", "namespace": namespace},
                       "spec": {"podSelector": {"matchLabels": {"faults.nodeport-guard.io/none": "1"}},
                                "policyTypes": ["Ingress"]}})


def _endpoints_current(cluster: Cluster, namespace: str, service: str, selector: str, pods: int) -> bool:
    """`pods` Ready pods, and their current IPv4 addresses are exactly the Service's ready endpoints:
    right after a restart the EndpointSlices still hold the pods' old addresses for a moment (the
    apiserver would call a dead webhook address, kube-proxy would DNAT to a dead backend)."""
    items = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]
    current = {a["ip"] for p in items for a in p["status"].get("podIPs") or [] if ":" not in a["ip"]
               and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
    slices = cluster.kubectl_json("-n", namespace, "get", "endpointslices", "-l",
                                  f"kubernetes.io/service-name={service}")["items"]
    ready = {a for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
             for a in e.get("addresses", []) if ":" not in a}
    return len(current) >= pods and current == ready


def _ready(cluster: Cluster, kind: str, name: str) -> bool:
    obj = cluster.kubectl_json("-n", NS, "get", kind, name)
    status = obj.get("status", {})
    if kind == "deployment":
        return int(status.get("readyReplicas", 0)) == int(obj["spec"]["replicas"])
    return int(status.get("numberReady", 0)) == int(status.get("desiredNumberScheduled", -1)) > 0


@pytest.mark.parametrize("reboot", [False, True], ids=["processes", "reboot"])
def test_whole_cluster_stopped_and_started_recovers_by_itself(
    cluster: Cluster, baseline: str, signer: Signer, fault_results: ResultTable, reboot: bool
) -> None:
    """`reboot`: the nodes' netfilter state is gone too (tables, nft, ipsets), as after a machine's
    reboot; until the enforcer's first sync the NodePorts are as kube-proxy alone leaves them."""
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        for webhook in cluster.kubectl_json("get", kind, "nodeport-guard")["webhooks"]:
            assert _exempt_namespaces(webhook) >= EXEMPT, f"{kind} {webhook['name']} does not exempt {EXEMPT}"
            assert not webhook.get("objectSelector", {}).get("matchExpressions"), webhook["objectSelector"]
            resources = {r for rule in webhook["rules"] for r in rule["resources"]}
            assert resources == {"networkpolicies"}, f"{kind} {webhook['name']} intercepts {resources}"
    wait_converged(cluster, signer, timeout=120)
    nodes = [n.name for n in cluster.plan.nodes]
    with TrafficProber(cluster) as prober, SliceRecorder(cluster, NAMESPACE, "echo") as slices:
        stopped_at = time.time()
        stop_seconds = restart.stop(cluster.plan.name, reboot_nodes=reboot)
        time.sleep(5)  # everything is down: the probes see it
        writes: dict[str, bool | str] = {}

        def while_no_node_runs(bare: Cluster) -> None:
            """The control plane is back, no pod runs: the webhook cannot serve."""
            for namespace in (*sorted(EXEMPT), NAMESPACE):
                proc = bare.kubectl("apply", "-f", "-", stdin=_inert_policy(namespace), check=False)
                writes[namespace] = proc.returncode == 0 or proc.stderr.strip()

        new = restart.start(cluster.plan.name, before_nodes=while_no_node_runs)
        cluster.holders.update(new.holders)  # the fixture's handle stays valid for the next tests
        up_at = time.time()
        wait_for("webhook replicas ready", lambda: _ready(cluster, "deployment", "nodeport-guard-webhook"),
                 RECOVERY_BOUND)
        wait_for("enforcers ready", lambda: _ready(cluster, "daemonset", "nodeport-guard-enforcer"), RECOVERY_BOUND)
        # Ready pods are not yet callable: the EndpointSlice follows a moment later.
        wait_for("webhook endpoints are the ready pods", lambda: _endpoints_current(
            cluster, NS, "nodeport-guard-webhook", "app.kubernetes.io/name=nodeport-guard-webhook", 2), RECOVERY_BOUND)
        wait_for("backend endpoints are the ready pods", lambda: _endpoints_current(
            cluster, NAMESPACE, "echo", f"app={APP}", len(nodes)), RECOVERY_BOUND)
        for n in nodes:
            wait_for(f"{n} enforcer /readyz", lambda n=n: enforcer_readyz(cluster, n)[0] == 200, 60)
        # Recovered, as a user sees it: the write refused before the nodes ran now goes through.
        wait_for("a policy write outside the exempt namespaces is admitted", lambda: cluster.kubectl(
            "apply", "-f", "-", stdin=_inert_policy(NAMESPACE), check=False).returncode == 0, RECOVERY_BOUND, 1.0)
        recovered_at = time.time()
        with ChurnDriver(cluster, ops=6, live=3, pause=0.5, seed=9, retry_for=0) as churn:
            assert churn.wait(timeout=120)
        converged = wait_converged(cluster, signer, timeout=120, since=recovered_at)
        # A steady stretch on the recovered cluster; after a reboot, past the lifetime of the UDP
        # conntrack entries opened while nothing filtered (NPG_CLEAR_CONNTRACK is off by default).
        time.sleep(max(10.0, recovered_at + (UDP_CONNTRACK_SECONDS + 15 if reboot else 0) - time.time()))
    outage = (stopped_at, recovered_at + (UDP_CONNTRACK_SECONDS + 5 if reboot else 0))
    summary = prober.summary(windows=[outage])
    during = prober.summary(since=stopped_at, until=recovered_at)
    riding = prober.summary(since=recovered_at, until=outage[1]).leak  # on conntrack entries of the window
    for namespace in (*sorted(EXEMPT), NAMESPACE):
        cluster.kubectl("-n", namespace, "delete", "networkpolicy", "faults-after-restart", "--ignore-not-found")
    delete_churn(cluster)
    wait_converged(cluster, signer, timeout=120)
    leak_window = (during.leaks[0].t - up_at, during.leaks[-1].t - up_at) if during.leaks else None
    fault_results.add(FaultResult(
        f"9 whole cluster stopped and started{' (nodes rebooted)' if reboot else ''}", summary.leak, summary.loss,
        converged.seconds,
        {"stop s": round(stop_seconds, 1), "probes during outage": during.denied_attempts + during.allowed_attempts,
         "leak window after start s": leak_window and tuple(round(t, 1) for t in leak_window),
         "start s": round(up_at - stopped_at - stop_seconds, 1),
         "recovered after start s": round(recovered_at - up_at, 1), "leak during outage": during.leak,
         "leak after ready on old conntrack entries": riding,
         "policy writes before any node ran": {ns: w is True for ns, w in writes.items()}}))
    refused = writes.pop(NAMESPACE)
    assert writes == dict.fromkeys(sorted(EXEMPT), True), f"writes in exempt namespaces failed: {writes}"
    # The webhook really was down (failurePolicy Fail): the same write elsewhere is refused, naming it.
    assert isinstance(refused, str) and "nodeport-guard" in refused, refused
    assert churn.failures() == [], f"admission failed after recovery: {churn.failures()[:3]}"
    assert during.denied_attempts > 50, f"the probes did not run through the outage: {during.describe()}"
    if not reboot:  # the rules stayed in the nodes' kernels: nothing may get through, even while down
        assert during.leak == 0, f"denied probes got through during the outage: {during.describe()}"
    assert summary.denied_attempts > 100 and summary.allowed_answered > 50, summary.describe()
    if summary.loss or summary.leak:
        odd = [*summary.losses, *summary.leaks]
        times = [r.t for r in odd]
        nodes_hit = sorted({r.node for r in odd})
        context = [f"started {up_at:.2f}, recovered {recovered_at:.2f}, converged after churn {converged.seconds}s",
                   "probes around:", *neighbours(prober.snapshot(), odd),
                   "echo endpoints:", *slices.describe(),
                   *(line for n in nodes_hit
                     for line in [f"{n} kube-proxy:", *node_log_near(cluster, n, "kube-proxy", times)]),
                   "enforcers:", *logs_around(cluster, times)]
        raise AssertionError(summary.describe() + "\n" + "\n".join(context))
