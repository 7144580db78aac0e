"""Audit mode on the real two-node cluster, with packets on both nodes (issue 13).

An audited deny-all lets client-b through and counts each new connection on the node it reached
(nodeport_guard_dropped_packets_total{mode="audit"} on that node's enforcer); switching the
policy to enforce (removing the author's annotation) drops it and counts each drop. Probes that
are dropped use a 0.5 s timeout: one TCP SYN, no retransmission, so the counters equal the probes.
"""

from __future__ import annotations

import functools
import json
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localcluster.backends import NAMESPACE
from localcluster.cluster import Cluster
from localcluster.probe import Target, probe_many
from tests.cluster.helpers import Deployment, apply_backends, delete_policies, eventually, expect, matrix, node_address

PORT = 30080  # externalTrafficPolicy Cluster
NODES = ("node1", "node2")
CASES = (("tcp", "v4", "TCP", "IPv4"), ("udp", "v6", "UDP", "IPv6"))
SENT = {"node1": 3, "node2": 2}  # different per node: a count on the wrong node would show
MODE_KEY = "nodeport-guard.io/mode"
_SCRAPE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9911/metrics', timeout=10).read().decode())"
)

Counters = dict[tuple[int, str, str, str], float]


@pytest.fixture(scope="module")
def backends(cluster: Cluster, deployed: Deployment) -> None:
    apply_backends(cluster)
    # Pods Ready is not kube-proxy ready: a probe before its endpoints are programmed is refused.
    expect(cluster, "client-b", matrix(cluster, [PORT]), answered=True, timeout=60)


def counters(cluster: Cluster, node: str) -> Counters:
    """nodeport_guard_dropped_packets_total of `node`'s enforcer: (nodeport, protocol, family, mode) -> value."""
    text = cluster.on_node(node, [sys.executable, "-c", _SCRAPE]).stdout
    out: Counters = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "nodeport_guard_dropped_packets_total":
                out[(int(s.labels["nodeport"]), s.labels["protocol"], s.labels["family"], s.labels["mode"])] = s.value
    return out


def deny_all(cluster: Cluster, mode: str | None) -> str:
    annotations = {MODE_KEY: mode} if mode else {}
    body = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": NAMESPACE, "annotations": annotations},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []},
    }
    result = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    return result.stderr


def send(cluster: Cluster, node: str, proto: str, family: str, n: int, timeout: float) -> list[str]:
    """`n` probes, one after the other."""
    target = Target(node_address(cluster, node, family), PORT, proto, timeout)  # type: ignore[arg-type]
    return [probe_many(cluster.plan.client("client-b").netns, [target])[0] for _ in range(n)]


def grown(before: Counters, after: Counters) -> Counters:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_audited_deny_passes_and_is_counted_then_enforce_drops_and_counts(cluster: Cluster, backends: None) -> None:
    warnings = deny_all(cluster, "audit")
    assert "audit mode" in warnings and MODE_KEY in warnings, warnings
    stored = cluster.kubectl_json("get", "networkpolicy", "-n", NAMESPACE, "deny-all")
    value = json.loads(stored["metadata"]["annotations"]["nodeport-guard.io/nodeports"])
    assert value["version"] == 3 and value["mode"] == "audit"
    try:
        # Both enforcers have programmed the audit (their counter sets exist) before we count.
        for node in NODES:
            eventually(functools.partial(_audit_programmed, cluster, node), timeout=60)
        before = {node: counters(cluster, node) for node in NODES}
        for node in NODES:
            for proto, family, _, _ in CASES:
                answers = send(cluster, node, proto, family, SENT[node], timeout=2.0)
                assert all(a.startswith("answer:") for a in answers), (node, proto, family, answers)
        for node in NODES:
            expected = {(PORT, p, f, "audit"): float(SENT[node]) for _, _, p, f in CASES}
            assert grown(before[node], counters(cluster, node)) == expected, node

        # The author removes the annotation: the webhook re-signs it as enforcing (version 2).
        cluster.kubectl("annotate", "networkpolicy", "-n", NAMESPACE, "deny-all", f"{MODE_KEY}-")
        cases = [(n, PORT, proto, fam) for n in NODES for proto, fam, _, _ in CASES]
        expect(cluster, "client-b", cases, answered=False, timeout=60)  # type: ignore[arg-type]
        before = {node: counters(cluster, node) for node in NODES}
        for node in NODES:
            for proto, family, _, _ in CASES:
                answers = send(cluster, node, proto, family, SENT[node], timeout=0.5)
                assert answers == ["timeout"] * SENT[node], (node, proto, family, answers)
        for node in NODES:
            expected = {(PORT, p, f, "enforce"): float(SENT[node]) for _, _, p, f in CASES}
            assert grown(before[node], counters(cluster, node)) == expected, node
    finally:
        delete_policies(cluster)
    expect(cluster, "client-b", matrix(cluster, [PORT]), answered=True, timeout=60)


def _audit_programmed(cluster: Cluster, node: str) -> None:
    """The port is protected and audited on `node` for every case: in the protocol's port set and in
    the audit set of its family (until both hold it, a probe may pass uncounted)."""
    for proto, family, _, _ in CASES:
        f = "4" if family == "v4" else "6"
        for name, member in ((f"npg-{f}-{proto}", str(PORT)), (f"npg-{f}-audit", f"{proto}:{PORT}")):
            members = cluster.on_node(node, ["ipset", "list", name], check=False).stdout
            assert member in members, f"{node}: {proto}:{PORT} not in {name} yet"
