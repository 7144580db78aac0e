"""Real packets through the product on both nodes (iptables and nftables kube-proxy), TCP and UDP, IPv4 and IPv6.

client namespace -> node address:NodePort -> our filter (mangle PREROUTING) -> kube-proxy DNAT -> a pod.
"""

from __future__ import annotations

import pytest

from localcluster.backends import SERVICES
from localcluster.cluster import Cluster
from tests.cluster.helpers import (
    CANARY_NODEPORT,
    Deployment,
    apply_backends,
    apply_policy,
    delete_policies,
    expect,
    matrix,
    our_dataplane,
    protected_nodeports,
)

ALLOW_A = [{"from": [{"ipBlock": {"cidr": "198.51.100.64/26"}}, {"ipBlock": {"cidr": "2001:db8:a::/64"}}]}]


@pytest.fixture(scope="module")
def backends(cluster: Cluster, deployed: Deployment) -> None:
    apply_backends(cluster)


def test_every_nodeport_answers_on_both_nodes_without_a_policy(cluster: Cluster, backends: None) -> None:
    results = expect(cluster, "client-b", matrix(cluster), answered=True)
    local = {s.node_port for s in SERVICES if s.traffic_policy == "Local"}
    pods = {p["metadata"]["name"]: p["spec"]["nodeName"]
            for p in cluster.kubectl_json("get", "pods", "-n", "demo", "-l", "app=echo")["items"]}
    for (node, port, _, _), answer in results.items():
        if port in local:  # externalTrafficPolicy Local: only the pod on the node that was asked
            assert pods[answer.removeprefix("answer:")] == node, (node, port, answer)


def test_deny_all_blocks_every_nodeport_on_both_nodes(cluster: Cluster, backends: None) -> None:
    result = apply_policy(cluster, "deny-all", [])
    assert result.returncode == 0, result.stderr
    assert "all external traffic will be dropped" in result.stderr
    try:
        for client in ("client-a", "client-b"):
            expect(cluster, client, matrix(cluster), answered=False)
        for node in ("node1", "node2"):
            assert any("NPG-INGRESS" in line for line in our_dataplane(cluster, node)), node
    finally:
        delete_policies(cluster)
    expect(cluster, "client-b", matrix(cluster), answered=True)


def test_allow_from_cidr_lets_one_client_back_on_both_nodes(cluster: Cluster, backends: None) -> None:
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    try:
        expect(cluster, "client-a", matrix(cluster), answered=True)
        expect(cluster, "client-b", matrix(cluster), answered=False)
    finally:
        delete_policies(cluster)
    expect(cluster, "client-b", matrix(cluster), answered=True)
    for node in ("node1", "node2"):  # only the canary's NodePort stays protected (manifests/canary/)
        assert protected_nodeports(cluster, node) == {CANARY_NODEPORT}, node


def test_a_bad_policy_is_rejected_with_the_field_and_the_fix(cluster: Cluster, backends: None) -> None:
    result = apply_policy(cluster, "sloppy", [{"from": [{"ipBlock": {"cidr": "203.0.113.7/24"}}]}])
    assert result.returncode != 0
    assert "spec.ingress[0].from[0].ipBlock.cidr" in result.stderr and "203.0.113.0/24" in result.stderr
