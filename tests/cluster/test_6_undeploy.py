"""`make undeploy` as the README says: no NPG- chain or rule and no npg- set is left on any node."""

from __future__ import annotations

from localcluster.cluster import Cluster
from tests.cluster.helpers import Deployment, apply_backends, apply_policy, expect, matrix, our_dataplane, undeploy
from tests.cluster.test_4_traffic import ALLOW_A


def test_make_undeploy_leaves_no_rule_or_set_on_any_node(cluster: Cluster, deployed: Deployment) -> None:
    apply_backends(cluster)
    # Leave a policy in place: undeploy must clean the nodes even then (the DaemonSet alone would not).
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    expect(cluster, "client-b", matrix(cluster), answered=False)
    for node in ("node1", "node2"):
        assert our_dataplane(cluster, node) != []
    result = undeploy(cluster)
    deployed.undeployed = True
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for node in ("node1", "node2"):
        assert our_dataplane(cluster, node) == [], node
    assert cluster.kubectl("get", "namespace", "nodeport-guard", check=False).returncode != 0
    # With the product gone the NodePorts are open again (the policy object itself remains).
    expect(cluster, "client-b", matrix(cluster), answered=True)
