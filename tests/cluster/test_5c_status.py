"""`kubectl nodeport-guard status` on the real two-node cluster, through kubectl, with real packets.

With allow-a in force (client-b dropped), a just-applied allow-b is reported not yet in force while one
node's enforcer is held paused (the transition is held still, never raced), then in force on both
nodes, and client-b's packets are answered on both; an enforcer stopped on one
node (the DaemonSet's nodeSelector moved away from it) leaves that node behind for allow-b, and
client-b is answered on the other node only; `--wait --timeout` exits 1 on time and 0
once every node caught up. A forged annotation is refused: a Warning Event from each node and the
state "refused". The enforcer runs on both nodes again at the end.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from typing import Any

import pytest

from localcluster.backends import NAMESPACE
from localcluster.cluster import Cluster
from tests.cluster.helpers import (
    Deployment,
    apply_backends,
    apply_policy,
    delete_policies,
    eventually,
    expect,
    matrix,
    paused_enforcer,
    probe_matrix,
    user_env,
)
from tests.cluster.test_4_traffic import ALLOW_A

ALLOW_B = [{"from": [{"ipBlock": {"cidr": "203.0.113.0/28"}}, {"ipBlock": {"cidr": "2001:db8:b::/64"}}]}]
NPG = "nodeport-guard"
DAEMONSET = "daemonset/nodeport-guard-enforcer"


def status(cluster: Cluster, *args: str, timeout: float = 150) -> tuple[int, str, float]:
    """`kubectl nodeport-guard status ...` as a user runs it; (exit code, output, seconds)."""
    started = time.monotonic()
    proc = subprocess.run(["kubectl", "nodeport-guard", "status", *args], env=user_env(cluster),
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def nodes_report(cluster: Cluster, policy: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    code, out, _ = status(cluster, policy, "-n", namespace, "-o", "json")
    report: dict[str, Any] = json.loads(out[: out.rindex("}") + 1])
    report["code"] = code
    report["by_node"] = {n["node"]: n for n in report["nodes"]}
    return report


def node_names(cluster: Cluster) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes")["items"])


def rollout(cluster: Cluster) -> None:
    cluster.kubectl("rollout", "status", "-n", NPG, DAEMONSET, "--timeout=180s", timeout=200)


@pytest.fixture
def backends(cluster: Cluster, deployed: Deployment) -> Any:
    apply_backends(cluster)
    yield
    delete_policies(cluster)


def test_a_just_applied_policy_is_not_in_force_then_in_force_on_both_nodes(
    cluster: Cluster, backends: None
) -> None:
    nodes = node_names(cluster)
    assert len(nodes) == 2
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    expect(cluster, "client-b", matrix(cluster, [30080]), answered=False)
    code, out, _ = status(cluster, "allow-a", "-n", NAMESPACE, "--wait", "--timeout", "90s")
    assert code == 0 and "in force on 2 of 2 nodes" in out, out

    # The transition is held still, not raced: with the second node's enforcer paused, allow-b cannot be
    # in force there however fast the first node is; released, both nodes program it.
    with paused_enforcer(cluster, nodes[1]):
        applied = time.monotonic()
        assert apply_policy(cluster, "allow-b", ALLOW_B).returncode == 0
        report = nodes_report(cluster, "allow-b")
        assert report["code"] == 1 and report["inForce"] is False, report
        assert report["by_node"][nodes[1]]["state"] != "in-force", report
        assert all(n["enforcer"] == "ready" for n in report["nodes"]), report
        # The paused node still drops client-b: what status says is what the packets meet.
        results = probe_matrix(cluster, "client-b", matrix(cluster, [30080]))
        assert not any(r.startswith("answer:") for (node, *_), r in results.items() if node == nodes[1]), results
    code, out, seconds = status(cluster, "allow-b", "-n", NAMESPACE, "--wait", "--timeout", "90s")
    in_force_after = time.monotonic() - applied
    assert code == 0, out
    assert "in force on 2 of 2 nodes" in out and f"up to date: {', '.join(nodes)}" in out
    print(f"allow-b in force on both nodes {in_force_after:.1f} s after kubectl apply (status --wait {seconds:.1f} s)")
    # What status says is what the packets meet: client-b is let in on both nodes, at once.
    results = probe_matrix(cluster, "client-b", matrix(cluster, [30080]))
    assert all(r.startswith("answer:") for r in results.values()), results
    digests = {n: cluster.kubectl_json("get", "lease", f"nodeport-guard-node-{n}", "-n", NPG)["metadata"]
               ["annotations"]["nodeport-guard.io/verdicts-digest"] for n in nodes}
    assert len(set(digests.values())) == 1, digests  # both nodes enforce the same verdicts

    def announced_once() -> None:
        events = cluster.kubectl_json("get", "events", "-n", NAMESPACE)["items"]
        mine = [e for e in events if e["reason"] == "InForce" and e["involvedObject"]["name"] == "allow-b"]
        assert len(mine) == 1 and mine[0]["type"] == "Normal", mine
        assert "in force on all 2 nodes" in mine[0]["message"]

    eventually(announced_once, timeout=30)  # the webhook's leader: a Normal Event, once


def test_a_node_whose_enforcer_is_stopped_is_behind_and_wait_times_out(cluster: Cluster, backends: None) -> None:
    first, second = node_names(cluster)
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    assert status(cluster, "allow-a", "-n", NAMESPACE, "--wait", "--timeout", "90s")[0] == 0
    selector = {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": first}}}}}
    cluster.kubectl("patch", "-n", NPG, DAEMONSET, "-p", json.dumps(selector))
    try:
        rollout(cluster)

        def stopped() -> None:
            report = nodes_report(cluster, "allow-a")
            assert report["by_node"][second]["enforcer"] == "stopped", report

        eventually(stopped, timeout=60)
        # What it programmed stays in force (its rules stay in place) ... once the restarted enforcer on the
        # other node has probed it again (the rollout replaced that prober too: one canary period).
        def still_in_force() -> None:
            report = nodes_report(cluster, "allow-a")
            assert report["by_node"][second]["state"] == "in-force", report

        eventually(still_in_force, timeout=30)
        # ... but a new policy does not reach it.
        assert apply_policy(cluster, "allow-b", ALLOW_B).returncode == 0
        code, out, seconds = status(cluster, "allow-b", "-n", NAMESPACE, "--wait", "--timeout", "8s")
        assert code == 1 and 8 <= seconds < 30, (code, seconds, out)
        assert "in force on 1 of 2 nodes" in out and f"up to date: {first}" in out, out
        assert f"behind: {second} (behind, 1 version(s) not programmed" in out, out
        assert f"enforcer not ready: {second} (stopped)" in out, out
        report = nodes_report(cluster, "allow-b")
        assert report["by_node"][first]["state"] == "in-force" and report["by_node"][second]["state"] == "behind"
        # The packets agree: client-b is let in where allow-b is in force, still dropped where it is behind.
        results = probe_matrix(cluster, "client-b", matrix(cluster, [30080]))
        assert all(r.startswith("answer:") == (node == first) for (node, *_), r in results.items()), results
    finally:
        cluster.kubectl("patch", "-n", NPG, DAEMONSET, "--type=json",
                        "-p", json.dumps([{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]))
        rollout(cluster)
    code, out, _ = status(cluster, "allow-b", "-n", NAMESPACE, "--wait", "--timeout", "90s")
    assert code == 0 and "in force on 2 of 2 nodes" in out, out
    expect(cluster, "client-b", matrix(cluster, [30080]), answered=True)


def test_a_forged_annotation_is_refused_with_a_warning_event_from_each_node(
    cluster: Cluster, deployed: Deployment
) -> None:
    # kube-system is outside the webhooks' reach, so the forged annotation is stored as written.
    forged = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "npg-forged",
            "namespace": "kube-system",
            "annotations": {
                "nodeport-guard.io/nodeports": json.dumps({"v": 2, "nodePorts": []}),
                "nodeport-guard.io/signature": "ed25519:forged:AAAA",
            },
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(forged))
    try:
        def refused_everywhere() -> dict[str, Any]:
            report = nodes_report(cluster, "npg-forged", "kube-system")
            assert report["code"] == 1 and {n["state"] for n in report["nodes"]} == {"refused"}, report
            return report

        eventually(refused_everywhere, timeout=60)

        def warned_by_each_node() -> None:
            events = cluster.kubectl_json("get", "events", "-n", "kube-system")["items"]
            hosts = {e["source"].get("host") for e in events
                     if e["reason"] == "AnnotationRejected" and e["involvedObject"]["name"] == "npg-forged"}
            assert hosts == set(node_names(cluster)), hosts
            assert all(e["type"] == "Warning" for e in events if e["reason"] == "AnnotationRejected")

        eventually(warned_by_each_node, timeout=60)
    finally:
        cluster.kubectl("delete", "networkpolicy", "npg-forged", "-n", "kube-system", "--ignore-not-found")


def test_an_enforcer_token_may_write_only_its_own_nodes_status(cluster: Cluster, deployed: Deployment) -> None:
    """The ValidatingAdmissionPolicy with a real pod-bound token (it names the pod's node)."""
    first, second = node_names(cluster)
    pods = cluster.kubectl_json("get", "pods", "-n", NPG, "-l", "app.kubernetes.io/name=nodeport-guard-enforcer")
    pod = next(p["metadata"]["name"] for p in pods["items"] if p["spec"]["nodeName"] == first)
    token = cluster.kubectl("create", "token", "nodeport-guard-enforcer", "-n", NPG, "--bound-object-kind=Pod",
                            f"--bound-object-name={pod}", "--duration=10m").stdout.strip()

    # A kubeconfig with the token alone: with the admin's client certificate next to it, the certificate would win.
    raw = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "clusters": raw["clusters"],
        "users": [{"name": "enforcer", "user": {"token": token}}],
        "contexts": [{"name": "enforcer", "context": {"cluster": raw["clusters"][0]["name"], "user": "enforcer"}}],
        "current-context": "enforcer",
    }
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as f:
        f.write(json.dumps(kubeconfig))
        f.flush()
        api = config.new_client_from_config(config_file=f.name)  # type: ignore[no-untyped-call]
    leases = client.CoordinationV1Api(api)
    body = {"metadata": {"annotations": {"nodeport-guard.io/probe": "x"}}}
    try:
        # A plain PATCH, as the enforcer sends it (kubectl patch would GET first, which it may not).
        leases.patch_namespaced_lease(f"nodeport-guard-node-{first}", NPG, body)
        with pytest.raises(ApiException) as denied:
            leases.patch_namespaced_lease(f"nodeport-guard-node-{second}", NPG, body)
        assert "the node its pod runs on" in str(denied.value.body), denied.value
    finally:
        api.close()
    cluster.kubectl("annotate", "lease", f"nodeport-guard-node-{first}", "-n", NPG, "nodeport-guard.io/probe-")
