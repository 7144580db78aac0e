"""The reconciler's spliced annotations (only the changed Services' entries recomputed) always equal
a full resolution, on random namespaces through random sequences of Service, Pod and policy changes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import NodePortEntry
from contract.signing import Signer
from tests import builders as b
from tests.unit.test_composition import CONTAINER_PORTS, POLICY_SPEC
from webhook import admission
from webhook.admission import AnnotationMemo, resolve_all_annotations
from webhook.cache import TRIMMERS, ClusterCache
from webhook.contribution import (
    ServiceEndpoints,
    namespace_endpoints,
    resolve_contribution,
    service_entries,
    sort_entries,
)
from webhook.semantics import Policy, compile_policy

KEY = Signer.from_seed(b"splice-test-key-0000000000000001")
NS = "default"
SERVICE_NAMES = ("web", "api", "dns")
PORTS = st.sampled_from(
    [
        [{"port": 80, "targetPort": "http"}],
        [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP", "targetPort": 8080}],
        [{"port": 90, "targetPort": 9050}],
    ]
)
# Few label values, mostly running pods: Services, pods and policies select each other often.
APP = st.fixed_dictionaries({"app": st.sampled_from(["a", "b"])}, optional={"tier": st.sampled_from(["a", "b"])})
SERVICE = st.tuples(st.sampled_from(SERVICE_NAMES), APP, PORTS, st.sampled_from([["IPv4"], ["IPv4", "IPv6"]]))
POD = st.tuples(st.integers(0, 4), APP, CONTAINER_PORTS, st.sampled_from(["Running", "Running", "Succeeded"]))
POLICY = st.tuples(st.integers(0, 3), POLICY_SPEC, st.sampled_from(["", "audit"]))
CHANGE = st.one_of(
    st.tuples(st.just("service"), SERVICE),
    st.tuples(st.just("delete service"), st.sampled_from(SERVICE_NAMES)),
    st.tuples(st.just("pod"), POD),
    st.tuples(st.just("delete pod"), st.integers(0, 4)),
    st.tuples(st.just("policy"), POLICY),
    st.tuples(st.just("delete policy"), st.integers(0, 3)),
)


def _service(change: tuple[str, dict[str, str], list[dict[str, Any]], list[str]]) -> dict[str, Any]:
    name, selector, ports, families = change
    node_ports = [dict(p, nodePort=30000 + 100 * SERVICE_NAMES.index(name) + i) for i, p in enumerate(ports)]
    return TRIMMERS["services"](b.service(name, selector or {"app": "a"}, node_ports, ip_families=families))


def _pod(change: tuple[int, dict[str, str], list[dict[str, Any]], str]) -> dict[str, Any]:
    index, labels, ports, phase = change
    return TRIMMERS["pods"](b.pod(f"p{index}", labels, ports, phase=phase))


def _policy(change: tuple[int, dict[str, Any], str], version: int) -> dict[str, Any]:
    index, spec, mode = change
    obj = b.policy(f"np{index}", spec, uid=f"uid-{index}-{version}")
    if mode:
        obj["metadata"]["annotations"] = {"nodeport-guard.io/mode": mode}
    return TRIMMERS["networkpolicies"](obj)


def _apply(cache: ClusterCache, change: tuple[str, Any], version: int) -> None:
    kind, what = change
    if kind == "service":
        cache.apply("services", "MODIFIED", _service(what))
    elif kind == "delete service":
        cache.apply("services", "DELETED", {"metadata": {"name": what, "namespace": NS}})
    elif kind == "pod":
        cache.apply("pods", "MODIFIED", _pod(what))
    elif kind == "delete pod":
        cache.apply("pods", "DELETED", {"metadata": {"name": f"p{what}", "namespace": NS}})
    elif kind == "policy":
        cache.apply("networkpolicies", "MODIFIED", _policy(what, version))
    else:
        cache.apply("networkpolicies", "DELETED", {"metadata": {"name": f"np{what}", "namespace": NS}})


@settings(max_examples=300, deadline=None)
@given(
    services=st.lists(SERVICE, max_size=3),
    pods=st.lists(POD, max_size=4),
    policies=st.lists(POLICY, min_size=1, max_size=4),
    changes=st.lists(CHANGE, min_size=1, max_size=8),
)
def test_spliced_annotations_equal_the_full_resolution_after_every_change(
    services: list[Any], pods: list[Any], policies: list[Any], changes: list[tuple[str, Any]]
) -> None:
    cache = ClusterCache()
    for change in [("service", s) for s in services] + [("pod", p) for p in pods] + [("policy", p) for p in policies]:
        _apply(cache, change, 0)
    memo = AnnotationMemo()
    for version, change in enumerate(changes, start=1):
        spliced = resolve_all_annotations(NS, cache, KEY, annotations=memo)
        assert spliced == resolve_all_annotations(NS, cache, KEY), f"before change {version}: {change}"
        _apply(cache, change, version)
    assert resolve_all_annotations(NS, cache, KEY, annotations=memo) == resolve_all_annotations(NS, cache, KEY)


@settings(max_examples=200, deadline=None)
@given(
    services=st.lists(SERVICE, min_size=1, max_size=3),
    pods=st.lists(POD, max_size=5),
    spec=POLICY_SPEC,
)
def test_a_policy_entries_are_the_union_of_its_per_service_parts(
    services: list[Any], pods: list[Any], spec: dict[str, Any]
) -> None:
    cache = ClusterCache()
    for change in [("service", s) for s in services] + [("pod", p) for p in pods]:
        _apply(cache, change, 0)
    obj = TRIMMERS["networkpolicies"](b.policy("np", spec, uid="uid"))
    policy = compile_policy(obj)
    endpoints = namespace_endpoints(NS, cache)
    full = resolve_contribution(policy, spec.get("podSelector"), cache, endpoints).entries
    assert sort_entries([e for s in endpoints for e in service_entries(policy, s)]) == full


def test_a_service_change_recomputes_only_that_service_for_each_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo's cost claim, counted: after a Service is added, each policy's part is computed for
    that Service only (the other Services' parts are kept)."""
    cache = ClusterCache()
    for i, name in enumerate(SERVICE_NAMES[:2]):
        _apply(cache, ("service", (name, {"app": f"a{i}"}, [{"port": 80, "targetPort": 8080}], ["IPv4"])), 0)
        _apply(cache, ("pod", (i, {"app": f"a{i}"}, [], "Running")), 0)
    for i in range(3):
        _apply(cache, ("policy", (i, {"podSelector": {}, "ingress": [{"from": b.ip_from("198.51.100.0/24")}]}, "")), 0)
    memo = AnnotationMemo()
    before = resolve_all_annotations(NS, cache, KEY, annotations=memo)
    computed: list[str] = []

    def counting(policy: Policy, service: ServiceEndpoints) -> tuple[NodePortEntry, ...]:
        computed.append(service.name)
        return service_entries(policy, service)

    _apply(cache, ("service", ("dns", {"app": "a0"}, [{"port": 53, "targetPort": 8080}], ["IPv4"])), 1)
    monkeypatch.setattr(admission, "service_entries", counting)
    after = resolve_all_annotations(NS, cache, KEY, annotations=memo)
    assert computed == ["dns"] * 3
    assert after == resolve_all_annotations(NS, cache, KEY) and after != before
