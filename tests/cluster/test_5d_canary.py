"""The canary on the real two-node cluster, by packets: is each node's filter in the packet's path?

After `make deploy` both nodes (kube-proxy iptables and nftables) are verified enforcing by their peer's
canary probes. A foreign rule that ACCEPTs new packets, inserted above our jump in node1's `mangle
PREROUTING` (what a Calico pre-DNAT allow amounts to; inside node1's network namespace only), lets a
denied client in (shown by its packets); node1 turns `bypassed` within two canary periods, `status`
exits non-zero naming node1 and the reason, the peer's metric and a Warning Event on the Node follow;
removing the rule restores `enforcing`, and the denied client is dropped again. On node2, nft rules at
prerouting priority -300 that rewrite the NodePorts' packets straight to local pods (what a BPF or OVS
data plane does in effect, before netfilter's conntrack and our filter) let the denied client in too,
and the canary catches it (node1's probe is answered). Our jump flushed by hand on node1 is
re-installed, and the window is measured.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.backends import APP, NAMESPACE
from localcluster.backends import PORT as BACKEND_PORT
from localcluster.cluster import Cluster
from localcluster.probe import Proto
from tests.cluster.helpers import (
    Deployment,
    apply_backends,
    apply_policy,
    delete_policies,
    eventually,
    expect,
    paused_enforcer,
)
from tests.cluster.test_4_traffic import ALLOW_A
from tests.cluster.test_5c_status import node_names, nodes_report, status

CANARY_PERIOD = 10.0  # NPG_CANARY_PERIOD_SECONDS's default, as deployed
STATUS_WRITE = 5.0  # NPG_STATUS_MIN_INTERVAL_SECONDS
# What a Calico HostEndpoint pre-DNAT allow amounts to: new TCP connections accepted before our jump.
FOREIGN = ["-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "issue-19-foreign",
           "-j", "ACCEPT"]


@pytest.fixture
def backends(cluster: Cluster, deployed: Deployment) -> Iterator[None]:
    apply_backends(cluster)
    yield
    delete_policies(cluster)


def our_backend(cluster: Cluster, node: str) -> str:
    """The iptables backend whose mangle PREROUTING holds our jump on `node`."""
    for backend in ("nft", "legacy"):
        out = cluster.on_node(node, [f"iptables-{backend}-save", "-t", "mangle"], check=False).stdout
        if "-j NPG-INGRESS" in out:
            return backend
    raise AssertionError(f"no nodeport-guard jump in mangle PREROUTING on {node}")


@contextlib.contextmanager
def foreign_accept(cluster: Cluster, node: str) -> Iterator[str]:
    backend = our_backend(cluster, node)
    tool = f"iptables-{backend}"
    cluster.on_node(node, [tool, "-w", "5", "-t", "mangle", "-I", "PREROUTING", "1", *FOREIGN])
    try:
        yield backend
    finally:
        cluster.on_node(node, [tool, "-w", "5", "-t", "mangle", "-D", "PREROUTING", *FOREIGN], check=False)


def peer_metrics(cluster: Cluster, node: str, about: str) -> dict[str, float]:
    """nodeport_guard_canary_result{node=about} as scraped from `node`'s enforcer."""
    plan = cluster.plan.node(node)
    script = f"import urllib.request;print(urllib.request.urlopen('http://{plan.v4}:9911/metrics',timeout=5).read().decode())"
    out = cluster.on_node(node, ["python3", "-c", script]).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("nodeport_guard_canary_result{") and f'node="{about}"' in line:
            result = line.split('result="', 1)[1].split('"', 1)[0]
            values[result] = float(line.rsplit(" ", 1)[1])
    return values


def path_of(report: dict[str, Any], node: str) -> dict[str, Any]:
    path: dict[str, Any] = report["by_node"][node]["path"]
    return path


def test_both_nodes_verified_then_a_foreign_accept_is_caught_by_the_canary_and_its_removal_restores(
    cluster: Cluster, backends: None
) -> None:
    node1, node2 = node_names(cluster)
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    denied: list[tuple[str, int, Proto, str]] = [(node1, 30080, "tcp", "v4")]
    expect(cluster, "client-b", denied, answered=False)
    # Both nodes verified enforcing by their peer's canary probe (the deploy's rollout is past already).
    code, out, _ = status(cluster, "allow-a", "-n", NAMESPACE, "--wait", "--timeout", "60s")
    assert code == 0 and "in force on 2 of 2 nodes" in out, out
    report = nodes_report(cluster, "allow-a")
    for node, peer in ((node1, node2), (node2, node1)):
        path = path_of(report, node)
        assert path["state"] == "enforcing" and path["verifiedAt"], report
        assert f"probe from {peer}" in path["reason"], path

    with foreign_accept(cluster, node1) as backend:
        inserted = time.monotonic()
        # The bypass is real: the denied client now reaches the NodePort on node1.
        expect(cluster, "client-b", denied, answered=True, timeout=10)

        def bypassed() -> dict[str, Any]:
            r = nodes_report(cluster, "allow-a")
            assert path_of(r, node1)["state"] == "bypassed", r
            return r

        report = eventually(bypassed, timeout=2 * CANARY_PERIOD + STATUS_WRITE + 5, interval=1)
        detected = time.monotonic() - inserted
        print(f"node1 ({backend}) reported bypassed {detected:.1f} s after the foreign ACCEPT was inserted")
        assert report["code"] == 1 and report["inForce"] is False
        assert report["by_node"][node1]["inForce"] is False and report["by_node"][node1]["state"] == "bypassed"
        reason = path_of(report, node1)["reason"]
        assert f"answered a probe from {node2}" in reason or "ACCEPTs new packets" in reason, report
        assert path_of(report, node2)["state"] == "enforcing", report  # the other node is unaffected
        code, out, _ = status(cluster, "allow-a", "-n", NAMESPACE)
        assert code == 1 and f"bypassed: {node1} (" in out and "in force on 1 of 2 nodes" in out, out
        # The canary caught it too (whatever the passive check said first): the prober's metric and a
        # Warning Event on the Node.
        eventually(lambda: _assert_metric(cluster, node2, node1, "answered"), timeout=2 * CANARY_PERIOD + 5)

        def warned() -> None:
            events = cluster.kubectl_json("get", "events", "-n", "default")["items"]
            mine = [e for e in events if e["reason"] == "NodePortFilterBypassed"
                    and e["involvedObject"]["kind"] == "Node" and e["involvedObject"]["name"] == node1]
            assert mine and mine[0]["type"] == "Warning", mine
        eventually(warned, timeout=10)

    removed = time.monotonic()
    expect(cluster, "client-b", denied, answered=False, timeout=10)

    def enforcing() -> None:
        r = nodes_report(cluster, "allow-a")
        assert r["code"] == 0 and path_of(r, node1)["state"] == "enforcing", r

    eventually(enforcing, timeout=2 * CANARY_PERIOD + STATUS_WRITE + 5, interval=1)
    print(f"node1 verified enforcing again {time.monotonic() - removed:.1f} s after the rule was removed")
    eventually(lambda: _assert_metric(cluster, node2, node1, "filtering"), timeout=2 * CANARY_PERIOD + 5)
    assert json.loads(cluster.kubectl("get", "svc", "-n", "nodeport-guard-canary", "nodeport-guard-canary",
                                      "-o", "json").stdout)["spec"]["ports"][0]["nodePort"] == 32767


def _assert_metric(cluster: Cluster, prober: str, about: str, result: str) -> None:
    values = peer_metrics(cluster, prober, about)
    assert values.get(result) == 1.0, values


def _local_pod_ip(cluster: Cluster, namespace: str, selector: str, node: str) -> str:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    ips = [p["status"].get("podIP", "") for p in pods if p["spec"].get("nodeName") == node]
    ips = [ip for ip in ips if ip and ":" not in ip]
    assert ips, f"no {selector} pod with an IPv4 address on {node}"
    return str(ips[0])


@contextlib.contextmanager
def early_rewrite(cluster: Cluster, node: str, rules: list[tuple[int, str, int]]) -> Iterator[None]:
    """What a BPF data plane does in effect, in nft on `node` (its netns only): each NodePort's packets rewritten
    to a local pod (address, port) at prerouting priority -300, ahead of conntrack and of mangle, and the
    replies rewritten back. A `type nat` chain cannot do it: the kernel runs every nat chain at the NAT
    core's own priority (-100), after our mangle filter (tried here: our filter still dropped it)."""
    table = ["ip", "npg-issue19-early"]
    node_ip = cluster.plan.node(node).v4
    cluster.on_node(node, ["nft", "add", "table", *table])
    try:
        cluster.on_node(node, ["nft", "add", "chain", *table, "pre",
                               "{ type filter hook prerouting priority -300 ; policy accept ; }"])
        cluster.on_node(node, ["nft", "add", "chain", *table, "post",
                               "{ type filter hook postrouting priority 300 ; policy accept ; }"])
        for port, pod, pod_port in rules:
            forward = ["ip", "daddr", node_ip, "tcp", "dport", str(port), "notrack",
                       "ip", "daddr", "set", pod, "tcp", "dport", "set", str(pod_port)]
            reply_in = ["ip", "saddr", pod, "tcp", "sport", str(pod_port), "notrack"]
            reply_out = ["ip", "saddr", pod, "tcp", "sport", str(pod_port),
                         "ip", "saddr", "set", node_ip, "tcp", "sport", "set", str(port)]
            cluster.on_node(node, ["nft", "add", "rule", *table, "pre", *forward])
            cluster.on_node(node, ["nft", "add", "rule", *table, "pre", *reply_in])
            cluster.on_node(node, ["nft", "add", "rule", *table, "post", *reply_out])
        yield
    finally:
        cluster.on_node(node, ["nft", "delete", "table", *table], check=False)


def test_an_early_rewrite_on_node2_is_caught_by_the_canary(cluster: Cluster, backends: None) -> None:
    node1, node2 = node_names(cluster)
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    denied: list[tuple[str, int, Proto, str]] = [(node2, 30080, "tcp", "v4")]
    expect(cluster, "client-b", denied, answered=False)
    eventually(lambda: _assert_metric(cluster, node1, node2, "filtering"), timeout=2 * CANARY_PERIOD + 5)
    echo = _local_pod_ip(cluster, NAMESPACE, f"app={APP}", node2)
    canary = _local_pod_ip(cluster, "nodeport-guard-canary", "app.kubernetes.io/name=nodeport-guard-canary", node2)
    with early_rewrite(cluster, node2, [(30080, echo, BACKEND_PORT), (32767, canary, 8080)]):
        started = time.monotonic()
        expect(cluster, "client-b", denied, answered=True, timeout=10)  # our rules never see a local NodePort
        eventually(lambda: _assert_metric(cluster, node1, node2, "answered"), timeout=2 * CANARY_PERIOD + 5)
        print(f"node1's canary probe of node2 answered {time.monotonic() - started:.1f} s after the early rewrite")

        def bypassed() -> dict[str, Any]:
            r = nodes_report(cluster, "allow-a")
            assert r["code"] == 1 and path_of(r, node2)["state"] == "bypassed", r
            return r

        eventually(bypassed, timeout=STATUS_WRITE + 10, interval=1)
    expect(cluster, "client-b", denied, answered=False, timeout=10)
    eventually(lambda: _assert_metric(cluster, node1, node2, "filtering"), timeout=2 * CANARY_PERIOD + 5)


def test_our_jump_flushed_by_hand_is_reinstalled_and_the_window_measured(cluster: Cluster, backends: None) -> None:
    node1, _ = node_names(cluster)
    assert apply_policy(cluster, "allow-a", ALLOW_A).returncode == 0
    backend = our_backend(cluster, node1)
    save = [f"iptables-{backend}-save", "-t", "mangle"]
    # Held still, not raced: with node1's enforcer paused the flush is seen to take our jump away, and the
    # client it denies gets in; released, the window until the jump is back is measured.
    with paused_enforcer(cluster, node1):
        cluster.on_node(node1, [f"iptables-{backend}", "-w", "5", "-t", "mangle", "-F", "PREROUTING"])
        assert "-j NPG-INGRESS" not in cluster.on_node(node1, save).stdout
        expect(cluster, "client-b", [(node1, 30080, "tcp", "v4")], answered=True, timeout=10)
        released = time.monotonic()

    def back() -> None:
        assert "-j NPG-INGRESS" in cluster.on_node(node1, save).stdout

    eventually(back, timeout=15, interval=0.2)
    window = time.monotonic() - released
    print(f"our jump flushed on node1 ({backend}) was back {window:.1f} s after its enforcer could act")
    assert window < 5 + 5  # the 5 s rule check, then a full sync
    expect(cluster, "client-b", [(node1, 30080, "tcp", "v4")], answered=False, timeout=10)
