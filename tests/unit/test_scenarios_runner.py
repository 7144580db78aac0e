"""Unit tests of tests.scenarios: a case becomes objects, probes and notes without copying it (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios import (
    build_objects,
    has_local_service,
    load_cases,
    node_ports_of,
    parse_case,
    pinned_node_ports,
    plan_rounds,
    ports_of,
    renumber,
    reserved_count,
    serve_ports,
    sources_of,
)


def _case(**overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "name": "c",
        "services": [{
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
        }],
        "pods": [{"name": "web-1", "labels": {"app": "web"}}, {"name": "web-2", "labels": {}, "namespace": "b"}],
        "policies": [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "p", "namespace": "default"}, "spec": {"podSelector": {}}}],
        "expect": [
            {"nodePort": 30080, "protocol": "TCP", "source": "192.0.2.10", "allowed": False},
            {"nodePort": 30080, "protocol": "TCP", "source": "2001:db8::10", "allowed": False},
        ],
        "note": "n",
    }
    case.update(overrides)
    return case


def test_objects_move_to_the_mapped_namespaces_and_ipv6_makes_the_service_dual_stack() -> None:
    case = parse_case(_case())
    assert case.namespaces == ("b", "default") and not case.invalid
    objects = build_objects(case, {"default": "x-default", "b": "x-b"})
    kinds = [(o["kind"], o["metadata"]["namespace"]) for o in objects.workloads]
    assert kinds == [("Pod", "x-default"), ("Pod", "x-b"), ("Service", "x-default")]
    service = objects.workloads[-1]
    assert service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert service["spec"]["ipFamilyPolicy"] == "RequireDualStack"
    assert objects.policies[0]["metadata"]["namespace"] == "x-default"
    assert any("single-stack" in n and "2001:db8::10" in n for n in objects.notes)
    assert any("192.0.2.0/24" in n for n in objects.notes)
    # The case itself is left as it was.
    assert "ipFamilies" not in case.services[0]["spec"]


def test_an_ipv4_only_case_keeps_its_service_single_stack() -> None:
    raw = _case(expect=[{"nodePort": 30080, "protocol": "TCP", "source": "198.51.100.7", "allowed": True}])
    objects = build_objects(parse_case(raw), {"default": "d", "b": "b"})
    assert "ipFamilies" not in objects.workloads[-1]["spec"] and objects.notes == ()


def test_the_shared_cases_load_and_every_expectation_is_probeable() -> None:
    cases = load_cases()
    expectations = [e for c in cases for e in c.expectations]
    assert len(cases) >= 36 and len(expectations) >= 112
    assert {e.probe_protocol for e in expectations} <= {"tcp", "udp", "sctp"}
    assert len(set(sources_of(cases))) == len(sources_of(cases))
    assert all(30000 <= p <= 32767 for p in ports_of(cases))
    assert 0 < reserved_count(cases) < len(expectations)


def _policy_ports(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"},
             "spec": {"podSelector": {}, "ingress": [{"ports": list(entries)}]}}]


def test_a_nodeport_named_by_a_policy_port_or_range_is_pinned_the_others_are_not() -> None:
    assert pinned_node_ports(parse_case(_case())) == set()
    assert pinned_node_ports(parse_case(_case(policies=_policy_ports({"port": 30080})))) == {30080}
    assert pinned_node_ports(parse_case(_case(policies=_policy_ports({"port": 30000, "endPort": 32767})))) == {30080}
    assert pinned_node_ports(parse_case(_case(policies=_policy_ports({"port": "http"}, {"port": 8080})))) == set()


def test_renumbering_moves_services_healthchecks_and_expectations_together() -> None:
    raw = _case()
    raw["services"][0]["spec"]["healthCheckNodePort"] = 32101
    case = parse_case(raw)
    assert node_ports_of(case) == {30080, 32101}
    moved = renumber(case, {30080: 31000, 32101: 31001})
    assert node_ports_of(moved) == {31000, 31001}
    assert {e.node_port for e in moved.expectations} == {31000}
    assert node_ports_of(case) == {30080, 32101}  # the case itself is left as it was


def test_rounds_share_no_pinned_nodeport_never_reuse_a_taken_one_and_respect_pod_capacity() -> None:
    free = parse_case(_case(name="free"))
    pinned = [parse_case(_case(name=f"pinned-{i}", policies=_policy_ports({"port": 30080}))) for i in range(2)]
    rounds = plan_rounds([free, *pinned], taken={31000}, max_pods=10, pods_of=lambda c: len(c.pods))
    assert [[p.case.name for p in r] for r in rounds] == [["free", "pinned-0"], ["pinned-1"]]
    first = rounds[0][0]
    assert first.renumbered == {30080: 31001} and first.original == {31001: 30080}
    assert rounds[0][1].renumbered == {} and node_ports_of(rounds[0][1].case) == {30080}
    small = plan_rounds([free, free], taken=set(), max_pods=2, pods_of=lambda c: 2)
    assert [len(r) for r in small] == [1, 1]
    assert node_ports_of(small[0][0].case) != node_ports_of(small[1][0].case)


def test_a_pinned_nodeport_already_taken_is_refused_with_the_fix() -> None:
    case = parse_case(_case(policies=_policy_ports({"port": 30080})))
    with pytest.raises(ValueError, match=r"NodePort\(s\) \[30080\].*delete those Services"):
        plan_rounds([case], taken={30080}, max_pods=10, pods_of=lambda c: 1)


def test_every_shared_case_fits_two_rounds_on_an_empty_cluster_and_backends_serve_their_target_ports() -> None:
    cases = load_cases()
    rounds = plan_rounds(cases, taken=set(), max_pods=1000, pods_of=lambda c: len(c.pods))
    assert sum(len(r) for r in rounds) == len(cases) and len(rounds) <= 2
    raw = _case()
    raw["pods"][0]["containerPorts"] = [{"name": "m", "containerPort": 9090}]
    assert serve_ports(parse_case(raw)) == [8080, 9090]
    assert not has_local_service(parse_case(raw))
    raw["services"][0]["spec"]["externalTrafficPolicy"] = "Local"
    assert has_local_service(parse_case(raw))
