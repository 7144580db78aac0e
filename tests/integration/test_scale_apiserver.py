"""1,000 policies in one namespace through the real apiserver: admission stays flat, writes stay O(N).

Issue 9's reproduction: every policy selects the same pods and allows its own non-adjacent host, so
nothing merges. Each is created with its own `kubectl apply` (in parallel kubectl processes, to keep
the wall time reasonable); every apply must succeed (the webhooks' timeout is 5 s and their
failurePolicy Fail), the last ones must not be markedly slower than the first ones, the reconciler's
writes for the whole burst must be about one re-sign per create (not N^2/2), and deleting one policy
must drop its host from the composed verdict and from the node's ipset within the reconciler's 2 s.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from contract.annotation import read_signed
from tests.components import EnforcerProcess, Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, composed_verdict, nodeport_service, pod, policy
from tests.netns import Node, make_node
from tests.policy_watch import wait_quiet

POLICIES = 1_000
PARALLEL_APPLIES = 6
SERVICES = 4
PODS_PER_SERVICE = 2
WEBHOOK_TIMEOUT_SECONDS = 5.0  # manifests/base/webhook-configurations.yaml
BOUND_SECONDS = 2.0
EDGE = 50  # the first and the last applies compared
HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _host(index: int) -> str:
    """Every other address from 10.0.0.1: no two hosts are adjacent, so no two /32s merge."""
    return f"10.{index // 128 // 256}.{index // 128 % 256}.{index % 128 * 2 + 1}"


def _policy(index: int) -> dict[str, Any]:
    rule = {"from": [{"ipBlock": {"cidr": f"{_host(index)}/32"}}]}
    return policy(f"allow-{index}", {}, [rule], policyTypes=["Ingress"])


def _apply_one(plane: ControlPlane, namespace: str, index: int) -> tuple[int, float, float, str]:
    """(index, started, seconds, error) of one `kubectl apply` of policy allow-index."""
    started = time.monotonic()
    result = plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(_policy(index)), check=False, timeout=60
    )
    took = time.monotonic() - started
    return index, started, took, "" if result.returncode == 0 else result.stderr.strip()[:300]


def _allowed_hosts(plane: ControlPlane, namespace: str, node_port: int) -> set[str]:
    items: list[dict[str, Any]] = plane.kubectl_json("get", "networkpolicies", "-n", namespace)["items"]
    verdict = composed_verdict(items, node_port, "TCP")
    assert verdict is not None and not verdict.all_sources
    return {rule.cidr.removesuffix("/32") for rule in verdict.cidrs if rule.excepts == ()}


def _in_ipset(node: Node, host: str, node_port: int) -> bool:
    return node.run(["ipset", "test", "npg-4-allow", f"{host},tcp:{node_port}"], check=False).returncode == 0


@pytest.fixture
def node_enforcer(
    control_plane: ControlPlane, installation: Installation, webhook: WebhookServer, tmp_path: Path
) -> Iterator[tuple[Node, EnforcerProcess]]:
    with make_node(lock_path=str(tmp_path / "xtables.lock")) as node:
        enforcer = EnforcerProcess(
            control_plane, installation, node.node_ns, tmp_path / "enforcer.log", tmp_path, backend="legacy"
        )
        try:
            yield node, enforcer
        finally:
            enforcer.stop()
            print(enforcer.log_tail(20))
            enforcer.cleanup_node()


def test_a_thousand_policies_on_the_same_pods(
    control_plane: ControlPlane,
    namespace: str,
    installation: Installation,
    webhook: WebhookServer,
    node_enforcer: tuple[Node, EnforcerProcess],
) -> None:
    plane = control_plane
    port = [{"port": 80, "targetPort": "http"}]
    objects = [
        *(pod(f"pod-{s}-{r}", {"app": f"app-{s}"}, HTTP) for s in range(SERVICES) for r in range(PODS_PER_SERVICE)),
        *(nodeport_service(f"svc-{s}", {"app": f"app-{s}"}, port) for s in range(SERVICES)),
    ]
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*objects))
    node_ports = [
        int(plane.kubectl_json("get", "service", f"svc-{s}", "-n", namespace)["spec"]["ports"][0]["nodePort"])
        for s in range(SERVICES)
    ]
    writes_before = wait_quiet(webhook, quiet=0.5)

    burst_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=PARALLEL_APPLIES) as pool:
        results = sorted(pool.map(lambda i: _apply_one(plane, namespace, i), range(POLICIES)))
    burst_seconds = time.monotonic() - burst_started
    failed = [(i, err) for i, _, _, err in results if err]
    assert not failed, f"{len(failed)} applies failed, first: {failed[0]}"

    by_start = [took for _, _, took, _ in sorted(results, key=lambda r: r[1])]
    first, last = statistics.median(by_start[:EDGE]), statistics.median(by_start[-EDGE:])
    print(
        f"\n{POLICIES} kubectl applies ({PARALLEL_APPLIES} in parallel) in {burst_seconds:.1f} s; "
        f"first apply {by_start[0] * 1000:.0f} ms, last apply {by_start[-1] * 1000:.0f} ms; median of the "
        f"first {EDGE} {first * 1000:.0f} ms, of the last {EDGE} {last * 1000:.0f} ms; "
        f"slowest {max(by_start) * 1000:.0f} ms"
    )
    deciles = [statistics.median(by_start[k : k + POLICIES // 10]) for k in range(0, POLICIES, POLICIES // 10)]
    print("median apply latency per tenth of the burst (ms):", " ".join(f"{d * 1000:.0f}" for d in deciles))
    assert last <= max(2 * first, first + 1.0), "applies slow down as the namespace fills (admission grows with N)"

    # The reconciler re-signs each created policy with its uid, once: O(N) writes, not N^2/2.
    writes = wait_quiet(webhook, quiet=2.0, timeout=120) - writes_before
    print(f"reconciler writes for the burst: {writes} ({writes / POLICIES:.2f} per create)")
    assert writes <= 2 * POLICIES
    stored = plane.kubectl_json("get", "networkpolicies", "-n", namespace)["items"]
    assert len(stored) == POLICIES
    for obj in stored:
        meta = obj["metadata"]
        signed = read_signed(meta["annotations"], namespace, meta["name"], meta["uid"], installation.verifier_keys)
        assert signed is not None and signed.policy.uid == meta["uid"], meta["name"]
        assert sorted(e.node_port for e in signed.node_ports) == sorted(node_ports)

    # Nothing merged: the composed verdict of each NodePort lists all 1,000 hosts.
    hosts = {_host(i) for i in range(POLICIES)}
    assert _allowed_hosts(plane, namespace, node_ports[0]) == hosts

    node, enforcer = node_enforcer
    enforcer.start()
    enforcer.wait_ready(timeout=60)
    deadline = time.monotonic() + 60
    while not all(_in_ipset(node, _host(i), node_ports[-1]) for i in (0, POLICIES // 2, POLICIES - 1)):
        assert time.monotonic() < deadline, f"the enforcer did not program the burst:\n{enforcer.log_tail()}"
        time.sleep(0.3)

    # Deleting one policy drops its host at once: no other annotation holds a copy of it, so the
    # node's ipset loses it within the bound and the composed verdict right when the deletion is stored.
    gone = POLICIES // 2
    started = time.monotonic()
    plane.kubectl("delete", "networkpolicy", f"allow-{gone}", "-n", namespace)
    verdict_seconds = time.monotonic() - started
    while _in_ipset(node, _host(gone), node_ports[0]):
        assert time.monotonic() - started <= BOUND_SECONDS, "the deleted policy's host is still in the node's ipset"
        time.sleep(0.02)
    node_seconds = time.monotonic() - started
    print(
        f"deleted allow-{gone}: gone from the composed verdict when kubectl delete returned ({verdict_seconds:.2f} s), "
        f"from the node's ipset after {node_seconds:.2f} s"
    )
    assert _allowed_hosts(plane, namespace, node_ports[0]) == hosts - {_host(gone)}
    assert _in_ipset(node, _host(gone + 1), node_ports[0])
