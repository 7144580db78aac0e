"""Unit tests of tests.scenarios: a case becomes objects, probes and notes without copying it (pure)."""

from __future__ import annotations

from typing import Any

from tests.scenarios import build_objects, load_cases, parse_case, ports_of, reserved_count, sources_of


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
