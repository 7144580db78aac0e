"""The rules stay in place while the enforcer pod is replaced: deleted, or rolled to a new image tag.

A client probes a NodePort on each node every 100 ms from a denied source the whole time; not one
of its new connections may get through. An allowed client keeps getting through (so the probes test
the filter, not a dead path).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.cluster import Cluster
from localcluster.probe import SteadyProbe, Target
from tests.cluster.helpers import Deployment, apply_backends, apply_policy, delete_policies, expect, matrix
from tests.cluster.test_4_traffic import ALLOW_A

NS = "nodeport-guard"
SELECTOR = "app.kubernetes.io/name=nodeport-guard-enforcer"


@pytest.fixture
def allow_a_only(cluster: Cluster, deployed: Deployment) -> Iterator[None]:
    apply_backends(cluster)
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    expect(cluster, "client-b", matrix(cluster), answered=False)
    yield
    delete_policies(cluster)


def _probes(cluster: Cluster, client: str) -> list[SteadyProbe]:
    netns = cluster.plan.client(client).netns
    return [SteadyProbe(netns, Target(n.v4, 30080, proto), interval=0.1)
            for n in cluster.plan.nodes for proto in ("tcp", "udp")]


def _while_probing(cluster: Cluster, action: object) -> tuple[list[SteadyProbe], list[SteadyProbe]]:
    denied, allowed = _probes(cluster, "client-b"), _probes(cluster, "client-a")
    for p in [*denied, *allowed]:
        p.__enter__()
    try:
        assert callable(action)
        action()
    finally:
        for p in [*denied, *allowed]:
            p.__exit__(None, None, None)
    return denied, allowed


def _enforcer_pods(cluster: Cluster) -> dict[str, str]:
    pods = cluster.kubectl_json("get", "pods", "-n", NS, "-l", SELECTOR)["items"]
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}


def test_deleting_the_enforcer_pods_opens_no_window(cluster: Cluster, allow_a_only: None) -> None:
    before = _enforcer_pods(cluster)

    def replace_pods() -> None:
        cluster.kubectl("delete", "pods", "-n", NS, "-l", SELECTOR, "--wait=true", timeout=120)
        cluster.kubectl("rollout", "status", "-n", NS, "daemonset/nodeport-guard-enforcer", "--timeout=120s",
                        timeout=150)

    denied, allowed = _while_probing(cluster, replace_pods)
    assert set(_enforcer_pods(cluster)).isdisjoint(before)
    for p in denied:
        assert p.attempts > 20 and p.answered == [], p.result
    for p in allowed:
        assert len(p.answered) > 20, p.result


def test_rolling_the_enforcer_to_a_new_image_tag_opens_no_window(cluster: Cluster, allow_a_only: None) -> None:
    cluster.tag_image("docker.io/library/nodeport-guard:0.1.0", "docker.io/library/nodeport-guard:0.1.0-rollout")

    def roll() -> None:
        cluster.kubectl("set", "image", "-n", NS, "daemonset/nodeport-guard-enforcer",
                        "enforcer=nodeport-guard:0.1.0-rollout")
        cluster.kubectl("rollout", "status", "-n", NS, "daemonset/nodeport-guard-enforcer", "--timeout=180s",
                        timeout=200)

    denied, allowed = _while_probing(cluster, roll)
    assert set(_enforcer_pods(cluster).values()) == {"nodeport-guard:0.1.0-rollout"}
    for p in denied:
        assert p.attempts > 20 and p.answered == [], p.result
    for p in allowed:
        assert len(p.answered) > 20, p.result
