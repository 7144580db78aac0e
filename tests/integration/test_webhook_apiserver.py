"""The webhook as users meet it: kubectl -> real kube-apiserver -> AdmissionReview -> gunicorn/TLS -> annotation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY, CidrRule, read_signed
from tests.components import WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import annotation_of, as_list, composed_verdict, node_ports_of, nodeport_service, pod, policy

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any], extra: tuple[str, ...] = ()) -> Any:
    return plane.kubectl("apply", "-n", namespace, *extra, "-f", "-", input=as_list(*objects), check=False)


def _get_policy(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = plane.kubectl_json("get", "networkpolicy", name, "-n", namespace)
    return result


def _node_port(plane: ControlPlane, namespace: str, service: str, index: int = 0) -> int:
    svc = plane.kubectl_json("get", "service", service, "-n", namespace)
    return int(svc["spec"]["ports"][index]["nodePort"])


def _eventually(check: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> float:
    """Poll until `check()` holds; returns the seconds it took. The 2 s budget is the issue's promise."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def web_app(control_plane: ControlPlane, namespace: str, webhook: WebhookServer) -> int:
    """Two pods behind a NodePort Service; returns the allocated nodePort."""
    result = _apply(
        control_plane,
        namespace,
        pod("web-1", {"app": "web", "tier": "a"}, HTTP),
        pod("web-2", {"app": "web", "tier": "b"}, HTTP),
        nodeport_service("web", {"app": "web"}, [{"port": 80, "targetPort": "http"}]),
    )
    assert result.returncode == 0, result.stderr
    return _node_port(control_plane, namespace, "web")


def test_deny_all_annotates_exactly_that_nodeport(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    result = _apply(control_plane, namespace, policy("deny-all", {}, [], policyTypes=["Ingress"]))
    assert result.returncode == 0, result.stderr
    stored = _get_policy(control_plane, namespace, "deny-all")
    ports = node_ports_of(stored)
    assert list(ports) == [(web_app, "TCP")]
    verdict = ports[(web_app, "TCP")]
    assert verdict.service == "web" and verdict.service_port == 80
    assert not verdict.allow.all_sources and verdict.allow.cidrs == ()
    assert f"NodePort {web_app}/TCP): all external traffic will be dropped" in result.stderr


def test_signature_binds_the_stored_uid_after_reconcile(
    control_plane: ControlPlane, namespace: str, web_app: int, installation: Any
) -> None:
    _apply(control_plane, namespace, policy("deny-all", {}, []))

    def signed_with_uid() -> bool:
        stored = _get_policy(control_plane, namespace, "deny-all")
        meta = stored["metadata"]
        keys = installation.verifier_keys
        annotation = read_signed(meta.get("annotations"), namespace, "deny-all", meta["uid"], keys)
        return annotation is not None and annotation.policy.uid == meta["uid"]

    _eventually(signed_with_uid, what="annotation re-signed with the policy uid")


def test_allow_from_ipblock_lists_cidr_minus_except(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    ingress = [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.7/32"]}}]}]
    result = _apply(control_plane, namespace, policy("allow-doc", {"matchLabels": {"app": "web"}}, ingress))
    assert result.returncode == 0, result.stderr
    verdict = node_ports_of(_get_policy(control_plane, namespace, "allow-doc"))[(web_app, "TCP")]
    assert verdict.allow.cidrs == (CidrRule("198.51.100.0/24", ("198.51.100.7/32",)),)


def test_server_dry_run_shows_annotation_and_stores_nothing(
    control_plane: ControlPlane, namespace: str, web_app: int
) -> None:
    body = as_list(policy("deny-all", {}, []))
    result = control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=body)
    shown = json.loads(result.stdout)
    shown = shown["items"][0] if shown.get("kind") == "List" else shown
    assert list(node_ports_of(shown)) == [(web_app, "TCP")]
    listed = control_plane.kubectl_json("get", "networkpolicies", "-n", namespace)
    assert listed["items"] == []


def test_host_bits_rejected_with_field_and_fix(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    ingress = [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}, {"ipBlock": {"cidr": "10.0.0.1/8"}}]}]
    result = _apply(control_plane, namespace, policy("sloppy", {}, ingress))
    assert result.returncode != 0
    expected = "spec.ingress[0].from[1].ipBlock.cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
    assert expected in result.stderr


def test_hand_set_annotation_rejected(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    forged = policy("forged", {}, [])
    forged["metadata"]["annotations"] = {NODEPORTS_KEY: '{"version":1}', SIGNATURE_KEY: "hmac-sha256:00"}
    result = _apply(control_plane, namespace, forged)
    assert result.returncode != 0
    assert NODEPORTS_KEY in result.stderr


def test_hand_edit_of_stored_annotation_rejected(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    assert _apply(control_plane, namespace, policy("deny-all", {}, [])).returncode == 0
    result = control_plane.kubectl(
        "annotate",
        "--overwrite",
        "-n",
        namespace,
        "networkpolicy",
        "deny-all",
        f"{NODEPORTS_KEY}=edited",
        check=False,
    )
    assert result.returncode != 0
    assert NODEPORTS_KEY in result.stderr
    stored = annotation_of(_get_policy(control_plane, namespace, "deny-all"))
    assert stored is not None and [v.node_port for v in stored.node_ports] == [web_app]


def test_cidr_limit_rejected_naming_the_limit(control_plane: ControlPlane, namespace: str, web_app: int) -> None:
    blocks = [{"ipBlock": {"cidr": f"198.51.{i // 256}.{i % 256}/32"}} for i in range(1001)]
    result = _apply(control_plane, namespace, policy("huge", {}, [{"from": blocks}]))
    assert result.returncode != 0
    assert "1000" in result.stderr and "NPG_MAX_CIDRS_PER_POLICY" in result.stderr


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        (
            [policy("selectors-only", {}, [{"from": [{"podSelector": {}}]}])],
            "podSelector",
        ),
        (
            [policy("partial", {"matchLabels": {"tier": "a"}}, [])],
            "some of the pods",
        ),
        (
            [policy("named", {}, [{"ports": [{"port": "grpc"}]}])],
            "grpc",
        ),
        (
            [policy("v6", {}, [{"from": [{"ipBlock": {"cidr": "2001:db8::/32"}}]}])],
            "IPv6",
        ),
    ],
    ids=["selector-peers-only", "partial-coverage", "named-port-unmatched", "ipv6-cidr-ipv4-service"],
)
def test_warnings_printed_by_kubectl(
    control_plane: ControlPlane, namespace: str, web_app: int, objects: list[dict[str, Any]], expected: str
) -> None:
    result = _apply(control_plane, namespace, *objects)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any(expected.lower() in w.lower() and f"{web_app}" in w and "web" in w for w in warnings), warnings


def test_ipv4_cidr_on_an_ipv6_only_service_is_warned(
    control_plane: ControlPlane, namespace: str, webhook: WebhookServer
) -> None:
    result = _apply(
        control_plane,
        namespace,
        pod("v6-1", {"app": "v6"}, HTTP),
        nodeport_service(
            "v6", {"app": "v6"}, [{"port": 80, "targetPort": "http"}], ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack"
        ),
    )
    assert result.returncode == 0, result.stderr
    node_port = _node_port(control_plane, namespace, "v6")
    result = _apply(
        control_plane, namespace, policy("v4-only", {}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}])
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any(f"NodePort {node_port}/TCP" in w and "IPv4" in w and "IPv6-only" in w for w in warnings), warnings


def test_new_service_and_deletion_update_annotation_within_2s(
    control_plane: ControlPlane, namespace: str, web_app: int
) -> None:
    assert _apply(control_plane, namespace, policy("deny-all", {}, [])).returncode == 0
    assert (
        _apply(
            control_plane, namespace, nodeport_service("web-admin", {"app": "web"}, [{"port": 81, "targetPort": 8080}])
        ).returncode
        == 0
    )
    second = _node_port(control_plane, namespace, "web-admin")

    def ports() -> set[int]:
        return {p for p, _ in node_ports_of(_get_policy(control_plane, namespace, "deny-all"))}

    _eventually(lambda: ports() == {web_app, second}, what="second NodePort added to the annotation")
    control_plane.kubectl("delete", "service", "web-admin", "-n", namespace)
    _eventually(lambda: ports() == {web_app}, what="deleted Service's NodePort removed")


def test_two_policies_compose_fail_closed_and_a_deletion_rewrites_nothing(
    control_plane: ControlPlane, namespace: str, web_app: int
) -> None:
    allow_a = policy("allow-a", {"matchLabels": {"tier": "a"}}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}])
    allow_b = policy("allow-b", {"matchLabels": {"tier": "b"}}, [{"from": [{"ipBlock": {"cidr": "198.51.100.0/25"}}]}])
    assert _apply(control_plane, namespace, allow_a, allow_b).returncode == 0

    def stored() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = control_plane.kubectl_json("get", "networkpolicies", "-n", namespace)["items"]
        return items

    def composed_is(cidr: str) -> bool:
        verdict = composed_verdict(stored(), web_app, "TCP")
        return verdict is not None and verdict.cidrs == (CidrRule(cidr),)

    # Each policy selects one of the two pods (partial coverage): the NodePort takes the intersection.
    _eventually(lambda: composed_is("198.51.100.0/25"), what="the composed verdict is the intersection")

    def bound_to_uids() -> bool:
        parts = [(annotation_of(p), p["metadata"]["uid"]) for p in stored()]
        return all(a is not None and a.policy.uid == uid for a, uid in parts)

    # The reconciler's one write per create (the re-sign with the uid) is done before we look for others.
    _eventually(bound_to_uids, what="both annotations re-signed with their uids")
    before = _get_policy(control_plane, namespace, "allow-a")["metadata"]["annotations"][NODEPORTS_KEY]
    control_plane.kubectl("delete", "networkpolicy", "allow-b", "-n", namespace)
    # web-2 (tier b) is no longer selected by any ingress policy: it accepts everything, so the
    # NodePort's verdict is web-1's alone, at once: allow-a's annotation never held allow-b's sources.
    assert composed_is("198.51.100.0/24")
    time.sleep(1.0)  # the reconciler has seen the deletion: it must not have rewritten allow-a
    assert _get_policy(control_plane, namespace, "allow-a")["metadata"]["annotations"][NODEPORTS_KEY] == before
