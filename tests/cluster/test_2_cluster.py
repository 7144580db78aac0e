"""The local cluster itself: Ready nodes on both kube-proxy modes, ServiceAccounts, scheduling, logs and exec."""

from __future__ import annotations

from localcluster.backends import NAMESPACE
from localcluster.cluster import Cluster
from tests.cluster.helpers import apply_backends


def test_two_nodes_are_ready_dual_stack(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    assert sorted(nodes) == ["node1", "node2"]
    for name, node in nodes.items():
        plan = cluster.plan.node(name)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", ready
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [plan.v4, plan.v6]
        assert node["spec"]["podCIDRs"] == [plan.pod_v4, plan.pod_v6]
    assert cluster.kubectl("get", "serviceaccount", "default", "-n", "default").returncode == 0
    assert cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "default").returncode == 0


def test_kube_proxy_runs_iptables_mode_on_node1_and_nftables_on_node2(cluster: Cluster) -> None:
    node1 = cluster.on_node("node1", ["iptables-save", "-t", "nat"]).stdout
    assert "KUBE-SERVICES" in node1
    node2 = cluster.on_node("node2", ["nft", "list", "table", "ip", "kube-proxy"]).stdout
    assert "services" in node2


def test_pods_schedule_on_both_nodes_and_logs_and_exec_work(cluster: Cluster) -> None:
    apply_backends(cluster)
    pods = cluster.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", "app=echo")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node1", "node2"]
    for p in pods:
        name = p["metadata"]["name"]
        out = cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "python3", "-c", "import os; print(os.getuid())")
        assert out.stdout.strip() == "65532"
        assert cluster.kubectl("logs", "-n", NAMESPACE, name).returncode == 0
        ips = [ip["ip"] for ip in p["status"]["podIPs"]]
        assert len(ips) == 2, ips  # one IPv4 and one IPv6 address per pod
