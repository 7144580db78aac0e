"""`make deploy` on a real cluster: webhook replicas on different nodes, one enforcer per node, as the manifests say."""

from __future__ import annotations

from localcluster.cluster import Cluster
from tests.cluster.helpers import Deployment

NS = "nodeport-guard"


def test_make_deploy_rolls_out_the_webhook_on_both_nodes_and_one_enforcer_per_node(
    cluster: Cluster, deployed: Deployment
) -> None:
    assert "successfully rolled out" in deployed.output
    webhook = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-webhook")
    assert sorted(p["spec"]["nodeName"] for p in webhook["items"]) == ["node1", "node2"]
    enforcer = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-enforcer")
    assert sorted(p["spec"]["nodeName"] for p in enforcer["items"]) == ["node1", "node2"]
    for pod in [*webhook["items"], *enforcer["items"]]:
        assert all(s["ready"] for s in pod["status"]["containerStatuses"]), pod["metadata"]["name"]


def test_security_settings_hold_on_a_real_node(cluster: Cluster, deployed: Deployment) -> None:
    webhook = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-webhook")
    name = webhook["items"][0]["metadata"]["name"]
    uid = cluster.kubectl("exec", "-n", NS, name, "--", "python3", "-c", "import os; print(os.getuid())")
    assert uid.stdout.strip() == "65532"
    write = cluster.kubectl("exec", "-n", NS, name, "--", "python3", "-c", "open('/etc/x', 'w')", check=False)
    assert "Read-only file system" in write.stderr
    enforcer = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-enforcer")
    ename = enforcer["items"][0]["metadata"]["name"]
    caps = cluster.kubectl("exec", "-n", NS, ename, "--", "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    # CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only.
    assert int(caps, 16) == (1 << 12) | (1 << 13)


def test_each_enforcer_selects_its_node_backend_and_syncs(cluster: Cluster, deployed: Deployment) -> None:
    pods = cluster.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=nodeport-guard-enforcer")
    for pod in pods["items"]:
        logs = cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"]).stdout
        assert '"iptables backend selected"' in logs, (pod["spec"]["nodeName"], logs[-2000:])
        assert '"dataplane synced"' in logs, (pod["spec"]["nodeName"], logs[-2000:])
