"""End to end: kubectl -> apiserver -> webhook annotation -> enforcer in a node netns -> real packets.

The enforcer runs as a separate process inside the node network namespace with its own
ServiceAccount token; clients in another namespace open real TCP/UDP connections to the
NodePort the apiserver allocated. Both iptables backends are exercised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    NodePortVerdict,
    PolicyRef,
    SourceSet,
    encode,
    render_annotations,
)
from contract.signing import Signer, legacy_hmac_signature
from enforcer.plan import decode_state, plan_desired_state
from tests.components import EnforcerProcess, Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.netns import CLIENT_A4, CLIENT_A6, CLIENT_B4, CLIENT_B6, NODE_V4, NODE_V6, Node, Result, make_node

BACKENDS = ["legacy", "nft"]
HTTP = [
    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
]


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _node_state(node: Node, backend: str) -> tuple[list[str], str]:
    """Rules, user chains and non-default policies, and sets. Legacy tables spring into existence (empty,
    policy ACCEPT) when first touched; such a table holds nothing, so it is not a difference."""
    meaningful = []
    for line in node.iptables_save(backend).splitlines():
        body = line.split(": ", 1)[1]
        if body.startswith("-A"):
            meaningful.append(line)
        elif body.startswith(":"):
            chain, policy_ = body[1:].split()[:2]
            if chain not in BUILTIN_CHAINS or policy_ != "ACCEPT":
                meaningful.append(line)
    return meaningful, node.ipset_save()


@pytest.fixture(params=BACKENDS)
def enforced(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    installation: Installation,
    webhook: WebhookServer,
    tmp_path: Path,
) -> Iterator[tuple[Node, EnforcerProcess]]:
    with make_node(lock_path=str(tmp_path / "xtables.lock")) as node:
        before = _node_state(node, request.param)
        enforcer = EnforcerProcess(
            control_plane,
            installation,
            node.node_ns,
            tmp_path / "enforcer.log",
            tmp_path,
            backend=request.param,
            resync_seconds=2.0,
        )
        try:
            enforcer.start()
            enforcer.wait_ready()
            yield node, enforcer
        finally:
            enforcer.stop()
            print(enforcer.log_tail(60))
        # `enforcer cleanup`, the documented uninstall step, restores the node exactly.
        cleanup = enforcer.cleanup_node()
        assert cleanup.returncode == 0, cleanup.stderr
        assert _node_state(node, request.param) == before


def _apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    result = plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*objects), check=False)
    assert result.returncode == 0, result.stderr


def _eventually(
    node: Node, src: str, dst: str, port: int, expected: Result, proto: str = "tcp", timeout: float = 6.0
) -> None:
    deadline = time.monotonic() + timeout
    got: Result = "timeout"
    while time.monotonic() < deadline:
        got = node.connect(src, dst, port, proto, timeout=0.5)  # type: ignore[arg-type]
        if got == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{src} -> {dst}:{port}/{proto}: expected {expected}, still {got} after {timeout}s")


def _deploy_app(plane: ControlPlane, namespace: str, dual_stack: bool = False) -> tuple[int, int]:
    spec: dict[str, Any] = {}
    if dual_stack:
        spec = {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}
    _apply(
        plane,
        namespace,
        pod("web-1", {"app": "web"}, HTTP),
        pod("web-2", {"app": "web"}, HTTP),
        nodeport_service(
            "web",
            {"app": "web"},
            [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
            ],
            **spec,
        ),
    )
    svc = plane.kubectl_json("get", "service", "web", "-n", namespace)
    return int(svc["spec"]["ports"][0]["nodePort"]), int(svc["spec"]["ports"][1]["nodePort"])


def _ours(node: Node, backend: str) -> list[str]:
    rules = [line for line in node.iptables_save(backend).splitlines() if "NPG" in line]
    sets = [line for line in node.ipset_save().splitlines() if " npg-" in line]
    return rules + sets


def test_policies_filter_new_connections_and_deletion_restores(
    control_plane: ControlPlane,
    namespace: str,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, enforcer = enforced
    tcp_port, udp_port = _deploy_app(control_plane, namespace, dual_stack=True)
    node.listen(tcp_port)
    node.listen(udp_port)
    node_ip, node_ip6 = NODE_V4[0], NODE_V6[0]
    for src in (CLIENT_A4, CLIENT_B4):
        assert node.connect(src, node_ip, tcp_port) == "connected"

    _apply(control_plane, namespace, policy("deny-all", {}, [], policyTypes=["Ingress"]))
    for src in (CLIENT_A4, CLIENT_B4):
        _eventually(node, src, node_ip, tcp_port, "timeout")
    _eventually(node, CLIENT_A4, node_ip, udp_port, "timeout", proto="udp")
    _eventually(node, CLIENT_A6, node_ip6, tcp_port, "timeout")

    allow = policy(
        "allow-a",
        {"matchLabels": {"app": "web"}},
        [
            {
                "from": [
                    {"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.10/32"]}},
                    {"ipBlock": {"cidr": "2001:db8:1::/64"}},
                ]
            }
        ],
    )
    _apply(control_plane, namespace, allow)
    # The except carves CLIENT_A4 out; IPv6 client A is inside its block.
    _eventually(node, CLIENT_A6, node_ip6, tcp_port, "connected")
    _eventually(node, CLIENT_A6, node_ip6, udp_port, "connected", proto="udp")
    assert node.connect(CLIENT_A4, node_ip, tcp_port, timeout=0.5) == "timeout"
    assert node.connect(CLIENT_B6, node_ip6, tcp_port, timeout=0.5) == "timeout"

    # A second policy: the union of both policies' sources.
    _apply(control_plane, namespace, policy("allow-b", {}, [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]))
    _eventually(node, CLIENT_B4, node_ip, tcp_port, "connected")
    _eventually(node, CLIENT_B4, node_ip, udp_port, "connected", proto="udp")
    assert node.connect(CLIENT_A4, node_ip, tcp_port, timeout=0.5) == "timeout"

    control_plane.kubectl("delete", "networkpolicies", "--all", "-n", namespace)
    for src, dst in ((CLIENT_A4, node_ip), (CLIENT_B4, node_ip), (CLIENT_B6, node_ip6)):
        _eventually(node, src, dst, tcp_port, "connected")
    _eventually(node, CLIENT_A4, node_ip, udp_port, "connected", proto="udp")
    deadline = time.monotonic() + 5
    while _ours(node, enforcer.backend) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours(node, enforcer.backend) == []


def test_only_local_nodeports_in_range_are_touched(
    control_plane: ControlPlane,
    namespace: str,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, _ = enforced
    _apply(
        control_plane,
        namespace,
        pod("web-1", {"app": "web"}, HTTP),
        nodeport_service(
            "web",
            {"app": "web"},
            [{"port": 80, "targetPort": "http"}],
            service_type="LoadBalancer",
            externalTrafficPolicy="Local",
        ),
    )
    svc = control_plane.kubectl_json("get", "service", "web", "-n", namespace)
    nodeport, health = int(svc["spec"]["ports"][0]["nodePort"]), int(svc["spec"]["healthCheckNodePort"])
    for port in (nodeport, health, 8080):
        node.listen(port)
    node.listen(nodeport, where="remote")
    _apply(control_plane, namespace, policy("deny-all", {}, []))
    _eventually(node, CLIENT_A4, NODE_V4[0], nodeport, "timeout")
    # healthCheckNodePort, a port outside the range, and the same port forwarded to another host stay open.
    assert node.connect(CLIENT_A4, NODE_V4[0], health) == "connected"
    assert node.connect(CLIENT_A4, NODE_V4[0], 8080) == "connected"
    assert node.connect(CLIENT_A4, "192.0.2.2", nodeport) == "connected"


def _sign(key: Signer, namespace: str, name: str, uid: str, verdicts: tuple[NodePortVerdict, ...]) -> dict[str, str]:
    return render_annotations(Annotation(PolicyRef(namespace, name, uid), tuple(v.entry() for v in verdicts)), key)


def _hmac_signed(name: str, uid: str, verdict: NodePortVerdict) -> dict[str, str]:
    # What the HMAC-signing webhook (nodeport-guard 0.1) wrote: a version-1 value.
    value = encode(Annotation(PolicyRef("kube-system", name, uid), (verdict.entry("verdict"),), version=1))
    signature = legacy_hmac_signature(b"the-old-shared-hmac-key-32-bytes", value.encode())
    return {NODEPORTS_KEY: value, SIGNATURE_KEY: signature}


def _deny(port: int) -> NodePortVerdict:
    return NodePortVerdict(port, "TCP", "svc", 80, ("IPv4",), SourceSet.nobody())


def _metric(enforcer: EnforcerProcess, name: str) -> float:
    status, body = enforcer.http_get("/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported:\n{body}")


def _unwebhooked_policy(plane: ControlPlane, name: str, annotations: Callable[[str], dict[str, str]]) -> None:
    """kube-system is excluded from the webhook: what lands there is whatever a writer put."""
    plane.kubectl("create", "-n", "kube-system", "-f", "-", input=json.dumps(policy(name, {}, [])))
    uid = plane.kubectl_json("get", "networkpolicy", name, "-n", "kube-system")["metadata"]["uid"]
    args = [f"{k}={v}" for k, v in annotations(uid).items()]
    plane.kubectl("annotate", "--overwrite", "-n", "kube-system", "networkpolicy", name, *args)


def test_forged_and_out_of_range_annotations_program_nothing_and_are_reported(
    control_plane: ControlPlane,
    installation: Installation,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, enforcer = enforced
    node.listen(30999)
    node.listen(30998)
    node.listen(22)
    forged_key = Signer.generate()  # any key but the webhook's
    try:
        _unwebhooked_policy(
            control_plane, "forged", lambda uid: _sign(forged_key, "kube-system", "forged", uid, (_deny(30999),))
        )
        # The pre-Ed25519 form, made with an HMAC key (as a node that held the old shared key could).
        _unwebhooked_policy(control_plane, "forged-hmac", lambda uid: _hmac_signed("forged-hmac", uid, _deny(30998)))
        _unwebhooked_policy(
            control_plane, "ssh", lambda uid: _sign(installation.signing_key, "kube-system", "ssh", uid, (_deny(22),))
        )
        deadline = time.monotonic() + 6
        while _metric(enforcer, "nodeport_guard_rejected_annotations") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(enforcer, "nodeport_guard_rejected_annotations") == 2, [
            line for line in enforcer.http_get("/metrics")[1].splitlines() if "rejected" in line
        ]
        assert _metric(enforcer, "nodeport_guard_rejected_entries") == 1
        assert node.connect(CLIENT_A4, NODE_V4[0], 30999) == "connected"
        assert node.connect(CLIENT_A4, NODE_V4[0], 30998) == "connected"
        assert node.connect(CLIENT_A4, NODE_V4[0], 22) == "connected"
        events = control_plane.kubectl_json("get", "events", "-n", "kube-system")["items"]
        rejected = [(e["involvedObject"]["name"], e["message"]) for e in events if e["reason"] == "AnnotationRejected"]
        # (Events of earlier runs of this test may be there too: this run's forged key is unique.)
        kid = forged_key.public.key_id
        assert any(n == "forged" and "signature does not match" in m and kid in m for n, m in rejected), rejected
        assert any(n == "forged-hmac" and "legacy hmac-sha256" in m for n, m in rejected), rejected
    finally:
        control_plane.kubectl(
            "delete", "networkpolicy", "forged", "forged-hmac", "ssh", "-n", "kube-system", check=False
        )


def test_drift_is_repaired_within_one_resync(
    control_plane: ControlPlane,
    namespace: str,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, enforcer = enforced
    tcp_port, _ = _deploy_app(control_plane, namespace)
    node.listen(tcp_port)
    _apply(control_plane, namespace, policy("deny-all", {}, []))
    _eventually(node, CLIENT_A4, NODE_V4[0], tcp_port, "timeout")
    before = _metric(enforcer, "nodeport_guard_drift_repairs_total")
    # Someone empties our sets by hand: the port opens until the next resync repairs it.
    for line in node.ipset_save().splitlines():
        if line.startswith("create npg-"):
            node.run(["ipset", "flush", line.split()[1]])
    _eventually(node, CLIENT_A4, NODE_V4[0], tcp_port, "timeout", timeout=2.0 + 4.0)
    assert _metric(enforcer, "nodeport_guard_drift_repairs_total") > before


def test_a_hand_edited_set_member_is_repaired_within_one_resync(
    control_plane: ControlPlane,
    namespace: str,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, _ = enforced
    tcp_port, _ = _deploy_app(control_plane, namespace)
    node.listen(tcp_port)
    _apply(control_plane, namespace, policy("allow-a", {}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}]))
    _eventually(node, CLIENT_B4, NODE_V4[0], tcp_port, "timeout")
    # Swap the allowed member for another one: same member count, so only a full read-back sees it.
    node.run(["ipset", "del", "npg-4-allow", f"198.51.100.0/24,tcp:{tcp_port}"])
    node.run(["ipset", "add", "npg-4-allow", f"203.0.113.0/24,tcp:{tcp_port}"])
    assert node.connect(CLIENT_B4, NODE_V4[0], tcp_port) == "connected"
    # The fixture's resync period is 2 s.
    _eventually(node, CLIENT_B4, NODE_V4[0], tcp_port, "timeout", timeout=2.0 + 4.0)
    _eventually(node, CLIENT_A4, NODE_V4[0], tcp_port, "connected")


def test_kill_9_during_a_burst_then_restart_converges_to_the_plan(
    control_plane: ControlPlane,
    installation: Installation,
    enforced: tuple[Node, EnforcerProcess],
) -> None:
    node, enforcer = enforced
    names = [f"bulk-{i}" for i in range(1000)]
    items = []
    for name in names:
        p = policy(name, {}, [])
        p["metadata"]["namespace"] = "kube-system"
        p["metadata"]["labels"] = {"npg-test": "bulk"}
        items.append(p)
    try:
        control_plane.kubectl("create", "-f", "-", input=as_list(*items), timeout=300)
        stored = control_plane.kubectl_json("get", "networkpolicies", "-n", "kube-system")["items"]
        uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in stored}
        patches = []
        annotations = []
        for i, name in enumerate(names):
            annotation = Annotation(PolicyRef("kube-system", name, uids[name]), (_deny(30000 + i).entry(),))
            annotations.append(annotation)
            patches.append(
                {
                    "metadata": {
                        "name": name,
                        "namespace": "kube-system",
                        "annotations": render_annotations(annotation, installation.signing_key),
                    },
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                }
            )
        # Annotating 1,000 policies arrives as a burst of watch events; the enforcer is killed right after
        # the writes, while it may still be folding them in. A kill guaranteed to land inside one sync is
        # tests/dataplane/test_robustness.py's (it waits for the sync's own 'syncing' marker).
        writer = control_plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=as_list(*patches), timeout=300, check=False
        )
        assert writer.returncode == 0, writer.stderr
        enforcer.kill()
        enforcer.start()
        enforcer.wait_ready(timeout=60)
        expected = plan_desired_state(tuple(annotations), (30000, 32767)).state
        assert decode_state(node.cli("installed", backend=enforcer.backend).stdout) == expected
    finally:
        # One deletecollection request, not 1,000 DELETEs.
        control_plane.kubectl(
            "delete",
            "--raw",
            "/apis/networking.k8s.io/v1/namespaces/kube-system/networkpolicies?labelSelector=npg-test%3Dbulk",
            check=False,
            timeout=300,
        )
