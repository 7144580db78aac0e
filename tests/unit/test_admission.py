"""Unit tests of the pure admission path: AdmissionReview parsing, mutate, validate, reconcile."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import (
    ANNOTATION_PREFIX,
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    CidrRule,
    SourceSet,
    decode,
    encode,
    read_signed,
)
from contract.signing import Signer
from tests.builders import HTTP, WEB_PORT, Obj, ip_from, pod, policy, service
from webhook.addresses import source_set_contains
from webhook.admission import AdmissionConfig, mutate, resolve_all_annotations, validate
from webhook.review import AdmissionRequest, ReviewError, allowed, denied, parse_review
from webhook.snapshot import StaticClusterView

KEY = Signer.from_seed(b"unit-test-signing-key-0123456789")
CONFIG = AdmissionConfig(signing_key=KEY)
NP = NODEPORTS_KEY
SIG = SIGNATURE_KEY
POLICY_KIND = {"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"}
POLICY_RESOURCE = {"group": "networking.k8s.io", "version": "v1", "resource": "networkpolicies"}


def body(
    operation: str,
    obj: Obj | None,
    old: Obj | None = None,
    *,
    dry_run: bool = False,
    kind: Obj | None = None,
    resource: Obj | None = None,
    sub_resource: str | None = None,
) -> Obj:
    request: Obj = {
        "uid": "req-1",
        "kind": kind or POLICY_KIND,
        "resource": resource or POLICY_RESOURCE,
        "operation": operation,
        "namespace": "default",
        "name": ((obj or old or {}).get("metadata") or {}).get("name", ""),
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
    }
    if sub_resource is not None:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def req(operation: str, obj: Obj | None, old: Obj | None = None, **kw: Any) -> AdmissionRequest:
    return parse_review(body(operation, obj, old, **kw))


def view(*policies: Obj, pods: list[Obj] | None = None, services: list[Obj] | None = None) -> StaticClusterView:
    return StaticClusterView(
        services=services if services is not None else [service("web", {"app": "web"}, [dict(WEB_PORT)])],
        pods=pods if pods is not None else [pod("web-1", {"app": "web"}, [HTTP])],
        policies=list(policies),
    )


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(obj: Obj, answer: Obj) -> Obj:
    """Apply the answer's base64 JSONPatch (add/replace/remove on object members) to a copy."""
    out = copy.deepcopy(obj)
    response = answer["response"]
    if "patch" not in response:
        return out
    assert response["patchType"] == "JSONPatch"
    for op in json.loads(base64.b64decode(response["patch"])):
        *parents, last = [_unescape(t) for t in op["path"].split("/")[1:]]
        target = out
        for token in parents:
            target = target[token]
        if op["op"] == "add":
            target[last] = op["value"]
        elif op["op"] == "replace":
            assert last in target, f"replace of missing {op['path']}"
            target[last] = op["value"]
        elif op["op"] == "remove":
            assert last in target, f"remove of missing {op['path']}"
            del target[last]
        else:
            raise AssertionError(f"unexpected op {op}")
    return out


def patch_ops(answer: Obj) -> list[Obj]:
    response = answer["response"]
    return json.loads(base64.b64decode(response["patch"])) if "patch" in response else []


def ours(obj: Obj) -> dict[str, str]:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}


ALLOW_DOC = {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.0/24")}]}


# --- mutate: the patch ----------------------------------------------------------------------


def test_create_writes_signed_annotation_via_minimal_patch() -> None:
    obj = policy("p", ALLOW_DOC)
    answer = mutate(req("CREATE", obj), view(), CONFIG)
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == "req-1" and response["allowed"] is True
    assert patch_ops(answer) == [
        {"op": "add", "path": "/metadata/annotations", "value": ours(apply_patch(obj, answer))}
    ]
    result = apply_patch(obj, answer)
    annotation = read_signed(result["metadata"]["annotations"], "default", "p", "", KEY.verifier())
    assert annotation is not None and annotation.policy.uid == ""
    (verdict,) = annotation.node_ports
    assert (verdict.node_port, verdict.protocol, verdict.service, verdict.service_port) == (30080, "TCP", "web", 80)
    assert source_set_contains(verdict.allow, "192.0.2.9") and not source_set_contains(verdict.allow, "203.0.113.9")


def test_existing_annotations_are_kept_and_keys_escaped() -> None:
    obj = policy("p", ALLOW_DOC)
    obj["metadata"]["annotations"] = {"team": "a", "example.com/owner": "b"}
    answer = mutate(req("CREATE", obj), view(), CONFIG)
    ops = patch_ops(answer)
    assert sorted(op["path"] for op in ops) == [
        "/metadata/annotations/nodeport-guard.io~1nodeports",
        "/metadata/annotations/nodeport-guard.io~1signature",
    ]
    assert all(op["op"] == "add" for op in ops)
    result = apply_patch(obj, answer)
    assert result["metadata"]["annotations"]["team"] == "a"
    assert result["metadata"]["annotations"]["example.com/owner"] == "b"
    assert read_signed(result["metadata"]["annotations"], "default", "p", "", KEY.verifier()) is not None


def test_update_with_current_annotation_needs_no_patch_and_changes_are_replaced() -> None:
    stored = policy("p", ALLOW_DOC, uid="uid-1")
    first = apply_patch(stored, mutate(req("UPDATE", stored, stored), view(stored), CONFIG))
    again = mutate(req("UPDATE", first, first), view(first), CONFIG)
    assert "patch" not in again["response"] and "patchType" not in again["response"]
    changed = copy.deepcopy(first)
    changed["spec"]["ingress"][0]["from"] = ip_from("198.51.100.0/24")
    answer = mutate(req("UPDATE", changed, first), view(first), CONFIG)
    assert {op["op"] for op in patch_ops(answer)} == {"replace"}
    annotation = read_signed(ours(apply_patch(changed, answer)), "default", "p", "uid-1", KEY.verifier())
    assert annotation is not None and annotation.policy.uid == "uid-1"
    assert source_set_contains(annotation.node_ports[0].allow, "198.51.100.1")


def test_policy_affecting_no_nodeport_loses_stale_annotation() -> None:
    stored = policy("p", ALLOW_DOC, uid="uid-1")
    annotated = apply_patch(stored, mutate(req("UPDATE", stored, stored), view(stored), CONFIG))
    assert ours(annotated)
    moved = copy.deepcopy(annotated)
    moved["spec"]["podSelector"] = {"matchLabels": {"app": "other"}}
    answer = mutate(req("UPDATE", moved, annotated), view(annotated), CONFIG)
    assert sorted(op["op"] for op in patch_ops(answer)) == ["remove", "remove"]
    assert ours(apply_patch(moved, answer)) == {}
    untouched = mutate(req("CREATE", policy("q", {"podSelector": {"matchLabels": {"app": "x"}}})), view(), CONFIG)
    assert "patch" not in untouched["response"]


def test_unknown_keys_under_our_prefix_on_update_are_removed_when_unchanged() -> None:
    stored = policy("p", {"podSelector": {"matchLabels": {"app": "x"}}}, uid="u")
    stored["metadata"]["annotations"] = {"nodeport-guard.io/legacy": "1"}
    answer = mutate(req("UPDATE", stored, stored), view(stored), CONFIG)
    assert patch_ops(answer) == [{"op": "remove", "path": "/metadata/annotations/nodeport-guard.io~1legacy"}]


def test_dry_run_gives_the_same_answer() -> None:
    obj = policy("p", ALLOW_DOC)
    assert mutate(req("CREATE", obj, dry_run=True), view(), CONFIG) == mutate(req("CREATE", obj), view(), CONFIG)
    assert validate(req("CREATE", obj, dry_run=True), view(), CONFIG) == validate(req("CREATE", obj), view(), CONFIG)


@pytest.mark.parametrize(
    "request_body",
    [
        body("DELETE", None, policy("p", {"podSelector": {}})),
        body("CONNECT", {"kind": "PodExecOptions"}),
        body(
            "CREATE",
            pod("x", {"app": "web"}),
            kind={"group": "", "version": "v1", "kind": "Pod"},
            resource={"group": "", "version": "v1", "resource": "pods"},
        ),
        body(
            "CREATE",
            policy("p", ALLOW_DOC),
            kind={"group": "extensions", "version": "v1beta1", "kind": "NetworkPolicy"},
        ),
        body("UPDATE", policy("p", ALLOW_DOC), policy("p", ALLOW_DOC), sub_resource="status"),
    ],
)
def test_other_operations_and_kinds_are_allowed_untouched(request_body: Obj) -> None:
    request = parse_review(request_body)
    for handler in (mutate, validate):
        assert handler(request, view(), CONFIG) == {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "req-1", "allowed": True},
        }


# --- rejections -----------------------------------------------------------------------------


def _denied(answer: Obj) -> tuple[int, str]:
    response = answer["response"]
    assert response["allowed"] is False
    return response["status"]["code"], response["status"]["message"]


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        (
            [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.1/8"}}],
            "spec.ingress[0].from[1].ipBlock.cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
        ),
        (
            [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["198.51.100.0/25"]}}],
            "spec.ingress[0].from[0].ipBlock.except[0]: 198.51.100.0/25 is not strictly inside the cidr 192.0.2.0/24",
        ),
        (
            [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.7/24"]}}],
            "spec.ingress[0].from[0].ipBlock.except[0]: 192.0.2.7/24 has host bits",
        ),
        (
            [{"ipBlock": {"cidr": "192.0.2.300/24"}}],
            "spec.ingress[0].from[0].ipBlock.cidr: '192.0.2.300/24' is not a valid CIDR",
        ),
    ],
)
@pytest.mark.parametrize("handler", [mutate, validate])
def test_bad_ip_blocks_are_rejected(peers: list[Obj], message: str, handler: Any) -> None:
    obj = policy("p", {"podSelector": {}, "ingress": [{"from": peers}]})
    code, text = _denied(handler(req("CREATE", obj), view(), CONFIG))
    assert code == 422
    assert text.startswith(message)


def test_bad_ip_block_in_a_policy_that_selects_nothing_is_still_rejected() -> None:
    obj = policy("p", {"podSelector": {"matchLabels": {"app": "none"}}, "ingress": [{"from": ip_from("192.0.2.1/24")}]})
    assert _denied(mutate(req("CREATE", obj), view(), CONFIG))[0] == 422


def test_invalid_selector_operator_is_rejected() -> None:
    obj = policy("p", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is", "values": ["b"]}]}})
    code, text = _denied(mutate(req("CREATE", obj), view(), CONFIG))
    assert code == 422 and text.startswith(
        "spec.podSelector.matchExpressions[0].operator: 'Is' is not a valid operator"
    )


def test_cidr_limit_on_ip_blocks() -> None:
    config = AdmissionConfig(signing_key=KEY, max_cidrs_per_policy=3)
    obj = policy(
        "p",
        {
            "podSelector": {"matchLabels": {"app": "none"}},
            "ingress": [{"from": ip_from("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")}],
        },
    )
    code, text = _denied(mutate(req("CREATE", obj), view(), config))
    assert code == 422 and "4 CIDRs" in text and "limit of 3 (webhook setting NPG_MAX_CIDRS_PER_POLICY)" in text
    assert mutate(req("CREATE", obj), view(), AdmissionConfig(signing_key=KEY, max_cidrs_per_policy=4))["response"][
        "allowed"
    ]


def test_cidr_limit_on_resulting_annotation() -> None:
    # The policy lists 4 CIDRs, but its annotation repeats them for each of the 3 NodePorts it affects.
    services = [service(f"s{i}", {"app": "web"}, [dict(WEB_PORT, nodePort=30080 + i)]) for i in range(3)]
    obj = policy(
        "a",
        {
            "podSelector": {},
            "ingress": [{"from": ip_from("192.0.2.0/24", excepts=["192.0.2.1/32", "192.0.2.2/32", "192.0.2.4/32"])}],
        },
    )
    config = AdmissionConfig(signing_key=KEY, max_cidrs_per_policy=10)
    code, text = _denied(mutate(req("CREATE", obj), view(services=services), config))
    assert code == 422 and NP in text and "12 CIDRs" in text and "(webhook setting NPG_MAX_CIDRS_PER_POLICY)" in text


def test_other_policies_never_change_this_policys_annotation() -> None:
    # Two pods accept different networks (policy b selects one of them). Under contract v1 the
    # namespace-wide verdict fragmented into many prefixes in a's annotation; now a carries its own part.
    pods = [pod("a", {"app": "web", "k": "a"}, [HTTP]), pod("b", {"app": "web", "k": "b"}, [HTTP])]
    other = policy(
        "b",
        {
            "podSelector": {"matchLabels": {"k": "b"}},
            "ingress": [{"from": ip_from("192.0.2.0/24", excepts=["192.0.2.0/32"])}],
        },
    )
    obj = policy(
        "a",
        {
            "podSelector": {"matchLabels": {"k": "a"}},
            "ingress": [{"from": ip_from("192.0.2.0/24", excepts=["192.0.2.255/32"])}],
        },
    )
    config = AdmissionConfig(signing_key=KEY, max_cidrs_per_policy=10)
    alone = mutate(req("CREATE", obj), view(pods=pods), config)["response"]
    beside = mutate(req("CREATE", obj), view(other, pods=pods), config)["response"]
    assert alone["allowed"] and beside["allowed"]
    assert alone["patch"] == beside["patch"]


def test_nodeport_limit() -> None:
    services = [service(f"s{i}", {"app": "web"}, [dict(WEB_PORT, nodePort=30080 + i)]) for i in range(3)]
    config = AdmissionConfig(signing_key=KEY, max_nodeports_per_policy=2)
    code, text = _denied(mutate(req("CREATE", policy("p", ALLOW_DOC)), view(services=services), config))
    assert code == 422 and "3 NodePorts" in text and "limit of 2 (webhook setting NPG_MAX_NODEPORTS_PER_POLICY)" in text


def test_generate_name_cannot_be_bound() -> None:
    obj = policy("", ALLOW_DOC)
    obj["metadata"]["generateName"] = "p-"
    code, text = _denied(mutate(req("CREATE", obj), view(), CONFIG))
    assert code == 422 and text.startswith("metadata.name:")


# --- hand edits and tampering ---------------------------------------------------------------


def test_create_with_hand_written_annotation_is_rejected() -> None:
    obj = policy("p", ALLOW_DOC)
    obj["metadata"]["annotations"] = {NP: '{"forged":true}'}
    code, text = _denied(mutate(req("CREATE", obj), view(), CONFIG))
    assert code == 403
    assert text.startswith(f'metadata.annotations["{NP}"]') and "remove it" in text and "webhook writes it" in text


def test_create_with_exactly_the_computed_annotation_is_accepted() -> None:
    obj = policy("p", ALLOW_DOC)
    obj["metadata"]["annotations"] = ours(apply_patch(obj, mutate(req("CREATE", obj), view(), CONFIG)))
    answer = mutate(req("CREATE", obj), view(), CONFIG)
    assert answer["response"]["allowed"] and "patch" not in answer["response"]


def test_update_carrying_the_old_value_is_replaced_but_a_new_value_is_rejected() -> None:
    stored = policy("p", ALLOW_DOC, uid="u")
    stored = apply_patch(stored, mutate(req("UPDATE", stored, stored), view(stored), CONFIG))
    # The user edits the spec and sends the old (now stale) annotation back: fine, it is replaced.
    edited = copy.deepcopy(stored)
    edited["spec"]["ingress"] = [{}]
    answer = mutate(req("UPDATE", edited, stored), view(stored), CONFIG)
    assert answer["response"]["allowed"]
    annotation = read_signed(ours(apply_patch(edited, answer)), "default", "p", "u", KEY.verifier())
    assert annotation is not None and annotation.node_ports[0].allow == SourceSet.everyone()
    # A value that is neither the stored one nor the computed one was written by hand.
    forged = copy.deepcopy(stored)
    forged["metadata"]["annotations"][SIG] = "hmac-sha256:" + "0" * 64
    code, text = _denied(mutate(req("UPDATE", forged, stored), view(stored), CONFIG))
    assert code == 403 and text.startswith(f'metadata.annotations["{SIG}"]')


def test_validate_accepts_the_mutated_object_on_create_with_or_without_uid() -> None:
    obj = policy("p", ALLOW_DOC)
    mutated = apply_patch(obj, mutate(req("CREATE", obj), view(), CONFIG))
    assert validate(req("CREATE", mutated), view(), CONFIG)["response"]["allowed"]
    with_uid = copy.deepcopy(mutated)
    with_uid["metadata"]["uid"] = "uid-9"
    assert validate(req("CREATE", with_uid), view(), CONFIG)["response"]["allowed"]


@pytest.mark.parametrize("tamper", ["edit", "drop", "add-to-unaffected", "other-uid"])
def test_validate_rejects_tampering(tamper: str) -> None:
    obj = policy("p", ALLOW_DOC)
    final = apply_patch(obj, mutate(req("CREATE", obj), view(), CONFIG))
    if tamper == "edit":
        value = json.loads(final["metadata"]["annotations"][NP])
        value["nodePorts"][0]["allow"] = {"all": True}
        final["metadata"]["annotations"][NP] = encode(decode(json.dumps(value)))
    elif tamper == "drop":
        final["metadata"]["annotations"] = {}
    elif tamper == "add-to-unaffected":
        final["spec"]["podSelector"] = {"matchLabels": {"app": "none"}}
    else:
        stored = policy("p", ALLOW_DOC, uid="uid-a")
        final = apply_patch(stored, mutate(req("UPDATE", stored, stored), view(stored), CONFIG))
        final["metadata"]["uid"] = "uid-b"
    code, text = _denied(validate(req("CREATE", final), view(), CONFIG))
    assert code == 403 and text.startswith("metadata.annotations[") and "webhook writes them" in text


# --- warnings -------------------------------------------------------------------------------


def _warnings(answer: Obj) -> list[str]:
    assert answer["response"]["allowed"]
    warnings: list[str] = answer["response"].get("warnings", [])
    return warnings


PREFIX = "Service web port 80 (NodePort 30080/TCP): "


def test_warning_all_traffic_dropped() -> None:
    warnings = _warnings(mutate(req("CREATE", policy("p", {"podSelector": {}, "ingress": []})), view(), CONFIG))
    assert any(w.startswith(PREFIX) and "all external traffic will be dropped" in w for w in warnings)
    quiet = _warnings(mutate(req("CREATE", policy("p", ALLOW_DOC)), view(), CONFIG))
    assert quiet == []


def test_warning_selector_peers_are_the_only_sources() -> None:
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "fe"}}}]}]}
    warnings = _warnings(mutate(req("CREATE", policy("p", spec)), view(), CONFIG))
    assert any(w.startswith(PREFIX) and "podSelector/namespaceSelector peers" in w for w in warnings)


def test_warning_partial_coverage() -> None:
    pods = [pod("a", {"app": "web", "k": "a"}, [HTTP]), pod("b", {"app": "web"}, [HTTP])]
    spec = {"podSelector": {"matchLabels": {"k": "a"}}, "ingress": [{"from": ip_from("192.0.2.0/24")}]}
    warnings = _warnings(mutate(req("CREATE", policy("p", spec)), view(pods=pods), CONFIG))
    expected = "selects only some of the pods behind the Service (1 of 2)"
    assert any(w.startswith(PREFIX) and expected in w and "fails closed" in w for w in warnings)


def test_warning_unmatched_named_port() -> None:
    spec = {"podSelector": {}, "ingress": [{"ports": [{"port": "htp"}], "from": ip_from("192.0.2.0/24")}]}
    warnings = _warnings(mutate(req("CREATE", policy("p", spec)), view(), CONFIG))
    assert any(w.startswith(PREFIX) and "'htp' (TCP) matches no containerPort" in w for w in warnings)


@pytest.mark.parametrize(
    ("families", "cidr", "expected"),
    [
        (None, "2001:db8::/32", "2001:db8::/32 is IPv6 but the Service is IPv4-only"),
        (["IPv6"], "192.0.2.0/24", "192.0.2.0/24 is IPv4 but the Service is IPv6-only"),
    ],
)
def test_warning_family_mismatch(families: list[str] | None, cidr: str, expected: str) -> None:
    services = [service("web", {"app": "web"}, [dict(WEB_PORT)], ip_families=families)]
    spec = {"podSelector": {}, "ingress": [{"from": ip_from(cidr)}]}
    warnings = _warnings(mutate(req("CREATE", policy("p", spec)), view(services=services), CONFIG))
    assert any(w.startswith(PREFIX) and expected in w for w in warnings)
    dual = [service("web", {"app": "web"}, [dict(WEB_PORT)], ip_families=["IPv4", "IPv6"])]
    assert not any(
        "-only" in w for w in _warnings(mutate(req("CREATE", policy("p", spec)), view(services=dual), CONFIG))
    )


# --- reconciler -----------------------------------------------------------------------------


def test_resolve_all_annotations_uses_stored_uids() -> None:
    a = policy("a", ALLOW_DOC, uid="uid-a")
    b = policy("b", {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.0/25")}]}, uid="uid-b")
    c = policy("c", {"podSelector": {"matchLabels": {"app": "none"}}}, uid="uid-c")
    result = resolve_all_annotations("default", view(a, b, c), KEY)
    assert sorted(result) == ["a", "b", "c"] and result["c"] is None
    read_a = read_signed(result["a"], "default", "a", "uid-a", KEY.verifier())
    read_b = read_signed(result["b"], "default", "b", "uid-b", KEY.verifier())
    assert read_a is not None and read_b is not None
    # Each carries its own part (contract v2); composed, they give the namespace-wide verdict.
    assert [e.allow for e in read_a.node_ports] == [SourceSet(False, (CidrRule("192.0.2.0/24"),))]
    assert [e.allow for e in read_b.node_ports] == [SourceSet(False, (CidrRule("192.0.2.0/25"),))]
    assert read_a.policy.uid == "uid-a"
    # What the reconciler writes is what the mutating webhook would write on an update.
    stored_a = copy.deepcopy(a)
    stored_a["metadata"]["annotations"] = result["a"]
    assert "patch" not in mutate(req("UPDATE", stored_a, stored_a), view(a, b, c), CONFIG)["response"]


# --- AdmissionReview parsing and builders ---------------------------------------------------


def test_builders() -> None:
    patch = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    answer = allowed("u-1", patch, ["w1"])
    assert answer["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(answer["response"]["patch"])) == patch
    assert answer["response"]["warnings"] == ["w1"]
    assert "patch" not in allowed("u-1", [], [])["response"]
    no = denied("u-2", 422, "bad", ["w"])
    assert no["response"] == {
        "uid": "u-2",
        "allowed": False,
        "status": {"code": 422, "message": "bad", "reason": "Invalid"},
        "warnings": ["w"],
    }


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda b: [], "body must be a JSON object"),
        (lambda b: {**b, "apiVersion": "admission.k8s.io/v1beta1"}, "apiVersion"),
        (lambda b: {**b, "kind": "Other"}, "kind must be"),
        (lambda b: {k: v for k, v in b.items() if k != "request"}, "AdmissionReview.request is missing"),
        (lambda b: {**b, "request": {**b["request"], "uid": 5}}, "request.uid must be a string"),
        (lambda b: {**b, "request": {**b["request"], "uid": ""}}, "request.uid must not be empty"),
        (lambda b: {**b, "request": {**b["request"], "object": "x"}}, "request.object must be an object"),
        (lambda b: {**b, "request": {**b["request"], "object": None}}, "request.object is missing"),
        (lambda b: {**b, "request": {**b["request"], "operation": "PATCH"}}, "request.operation"),
        (lambda b: {**b, "request": {**b["request"], "kind": None}}, "request.kind is missing"),
        (lambda b: {**b, "request": {**b["request"], "dryRun": "yes"}}, "request.dryRun"),
    ],
)
def test_parse_review_rejects_malformed(mutation: Any, message: str) -> None:
    with pytest.raises(ReviewError) as err:
        parse_review(mutation(body("CREATE", policy("p", ALLOW_DOC))))
    assert message in err.value.message


def test_parse_review_fields() -> None:
    request = req("UPDATE", policy("p", ALLOW_DOC, uid="n"), policy("p", {}), dry_run=True)
    assert request.uid == "req-1" and request.operation == "UPDATE" and request.dry_run
    assert request.kind.kind == "NetworkPolicy" and request.resource.resource == "networkpolicies"
    assert request.namespace == "default" and request.name == "p"
    assert request.old_object == policy("p", {})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
REQUEST_KEYS = [
    "uid",
    "kind",
    "resource",
    "operation",
    "namespace",
    "name",
    "object",
    "oldObject",
    "dryRun",
    "subResource",
]


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_review_random_bodies(value: Any) -> None:
    try:
        parsed = parse_review(value)
    except ReviewError as err:
        assert err.message
        return
    assert isinstance(parsed, AdmissionRequest)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(REQUEST_KEYS), json_values, max_size=6), st.booleans())
def test_parse_review_random_requests(overrides: Obj, keep_base: bool) -> None:
    base = body("UPDATE", policy("p", ALLOW_DOC), policy("p", ALLOW_DOC))
    request = {**(base["request"] if keep_base else {}), **overrides}
    try:
        parsed = parse_review({**base, "request": request})
    except ReviewError:
        return
    assert isinstance(parsed.uid, str) and parsed.uid
    assert parsed.operation in ("CREATE", "UPDATE", "DELETE", "CONNECT")
    # Whatever parses, the decisions answer with a response (never an exception).
    for handler in (mutate, validate):
        answer = handler(parsed, view(), CONFIG)
        assert answer["response"]["uid"] == parsed.uid


def test_a_concurrent_policy_changes_nothing_between_mutation_and_validation() -> None:
    """Bulk applies: policy q lands between p's mutation and p's validation; p's own part is unchanged."""
    obj = policy("p", ALLOW_DOC)
    final = apply_patch(obj, mutate(req("CREATE", obj), view(), CONFIG))
    concurrent = policy("q", {"podSelector": {}, "ingress": [{"from": ip_from("198.51.100.0/24")}]}, uid="uid-q")
    now = apply_patch(obj, mutate(req("CREATE", obj), view(concurrent), CONFIG))
    assert now["metadata"]["annotations"][NP] == final["metadata"]["annotations"][NP]
    answer = validate(req("CREATE", final), view(concurrent), CONFIG)
    assert answer["response"]["allowed"] is True


# --- the Service race: a Service changes between a policy's mutation and its validation ---------

WEB = service("web", {"app": "web"}, [dict(WEB_PORT)])
ADMIN = service("admin", {"app": "web"}, [{**WEB_PORT, "name": "admin", "port": 81, "nodePort": 30081}])


def _mutated(services: list[Obj]) -> Obj:
    obj = policy("p", ALLOW_DOC)
    return apply_patch(obj, mutate(req("CREATE", obj), view(services=services), CONFIG))


def _node_ports(obj: Obj) -> set[int]:
    return {e["nodePort"] for e in json.loads(obj["metadata"]["annotations"][NP])["nodePorts"]}


@pytest.mark.parametrize(
    ("at_mutate", "at_validate", "kept"),
    [
        ([WEB], [WEB, ADMIN], True),  # a Service created: the annotation lacks its NodePort
        ([WEB, ADMIN], [WEB], True),  # a Service deleted: the annotation names its freed NodePort
        ([WEB], [service("web", {"app": "web"}, [{**WEB_PORT, "nodePort": 30099}])], True),  # renumbered
        # admin's pods changed: its NodePort 30081 is still held (by admin), so the stale entry is refused
        ([WEB, ADMIN], [WEB, service("admin", {"app": "other"}, [dict(ADMIN["spec"]["ports"][0])])], False),
    ],
    ids=["created", "deleted", "renumbered", "still-held"],
)
def test_validate_keeps_our_signed_annotation_when_a_service_changed_in_between(
    at_mutate: list[Obj], at_validate: list[Obj], kept: bool
) -> None:
    final = _mutated(at_mutate)
    assert _node_ports(final) != _node_ports(_mutated(at_validate))  # the race really changed the part
    answer = validate(req("CREATE", final), view(services=at_validate), CONFIG)
    if kept:
        assert answer["response"]["allowed"] is True
    else:
        code, text = _denied(answer)
        assert code == 403 and "changed after the mutating webhook ran" in text


def test_validate_refuses_a_stale_nodeport_that_another_namespace_now_holds() -> None:
    """The freed NodePort went to a Service of another namespace: our old entry must not reach it."""
    final = _mutated([WEB, ADMIN])
    elsewhere = service("theirs", {"app": "x"}, [dict(ADMIN["spec"]["ports"][0])], namespace="other")
    code, text = _denied(validate(req("CREATE", final), view(services=[WEB, elsewhere]), CONFIG))
    assert code == 403 and "changed after the mutating webhook ran" in text
    # The same request once the port is free again goes through.
    assert validate(req("CREATE", final), view(services=[WEB]), CONFIG)["response"]["allowed"] is True


def test_validate_still_refuses_an_annotation_dropped_while_a_service_was_created() -> None:
    """No annotation at all is never 'our output': the first NodePort Service of a namespace racing a
    create is refused (retry works), as is a policy stored unannotated."""
    obj = policy("p", ALLOW_DOC)
    final = apply_patch(obj, mutate(req("CREATE", obj), view(services=[]), CONFIG))
    assert not ours(final)  # no NodePort Service at mutation: nothing to annotate
    code, text = _denied(validate(req("CREATE", final), view(services=[WEB]), CONFIG))
    assert code == 403 and "changed after the mutating webhook ran" in text
