"""Unit tests of the pure NetworkPolicy semantics: selectors, ports, sources, namespace verdicts."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import CidrRule, NodePortVerdict, SourceSet
from tests.builders import HTTP, WEB_PORT, Obj, ip_from, pod, policy, service
from webhook.addresses import Addresses, source_set_contains
from webhook.namespace_resolution import resolve_namespace, resolve_policy
from webhook.objects import SemanticsError, compile_selector, selector_matches
from webhook.semantics import compile_ip_block, policy_types, render_source_set
from webhook.snapshot import StaticClusterView


def verdicts(view: StaticClusterView, namespace: str = "default") -> dict[tuple[int, str], NodePortVerdict]:
    """All NodePort verdicts of a namespace; asserts every policy carrying one agrees."""
    resolution = resolve_namespace(namespace, view)
    out: dict[tuple[int, str], NodePortVerdict] = {}
    for name in resolution.policies:
        for v in resolution.verdicts_for(name):
            assert out.setdefault((v.node_port, v.protocol), v) == v
    return out


def allowed(view: StaticClusterView, node_port: int, source: str, protocol: str = "TCP") -> bool:
    verdict = verdicts(view).get((node_port, protocol))
    return True if verdict is None else source_set_contains(verdict.allow, source)


def web_view(
    policies: list[Obj], pods: list[Obj] | None = None, services: list[Obj] | None = None
) -> StaticClusterView:
    return StaticClusterView(
        services=services if services is not None else [service("web", {"app": "web"}, [dict(WEB_PORT)])],
        pods=pods if pods is not None else [pod("web-1", {"app": "web"}, [HTTP])],
        policies=policies,
    )


# --- selectors ------------------------------------------------------------------------------

LABELS = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, LABELS, True),
        ({}, {}, True),
        ({"matchLabels": {"app": "web"}}, LABELS, True),
        ({"matchLabels": {"app": "db"}}, LABELS, False),
        ({"matchLabels": {"app": "web", "tier": "back"}}, LABELS, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, LABELS, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["back"]}]}, LABELS, True),
        # NotIn and DoesNotExist match objects lacking the key.
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, LABELS, True),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, LABELS, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, LABELS, True),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, LABELS, False),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "Exists"},
                    {"key": "zone", "operator": "DoesNotExist"},
                ],
            },
            LABELS,
            True,
        ),
        (
            {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]},
            LABELS,
            False,
        ),
    ],
)
def test_selector_matching(selector: Obj, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}, "matchExpressions[0].operator"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "matchExpressions[0].values"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "matchExpressions[0].values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key"),
        ({"matchLabels": ["a"]}, "matchLabels"),
    ],
)
def test_invalid_selectors_are_rejected_with_the_field(selector: Obj, field: str) -> None:
    with pytest.raises(SemanticsError) as err:
        compile_selector(selector, "spec.podSelector")
    assert err.value.field == f"spec.podSelector.{field}"


# --- policyTypes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ("Ingress",)),
        ({"ingress": [{}]}, ("Ingress",)),
        ({"egress": [{}]}, ("Egress", "Ingress")),
        ({"egress": []}, ("Ingress",)),
        ({"policyTypes": ["Egress"], "ingress": [{}]}, ("Egress",)),
        ({"policyTypes": ["Ingress", "Egress"]}, ("Egress", "Ingress")),
    ],
)
def test_policy_types_defaulting(spec: Obj, expected: tuple[str, ...]) -> None:
    assert policy_types(policy("p", spec)) == expected


def test_egress_only_policy_does_not_protect_the_nodeport() -> None:
    view = web_view([policy("p", {"podSelector": {}, "policyTypes": ["Egress"], "ingress": []})])
    assert verdicts(view) == {}
    assert resolve_namespace("default", view).verdicts_for("p") == ()


def test_empty_ingress_list_denies_and_empty_rule_allows_all() -> None:
    deny = web_view([policy("deny", {"podSelector": {}, "ingress": []})])
    assert verdicts(deny)[(30080, "TCP")].allow == SourceSet.nobody()
    allow_all = web_view([policy("all", {"podSelector": {}, "ingress": [{}]})])
    assert verdicts(allow_all)[(30080, "TCP")].allow == SourceSet.everyone()
    both = web_view(
        [policy("deny", {"podSelector": {}, "ingress": []}), policy("all", {"podSelector": {}, "ingress": [{}]})]
    )
    assert verdicts(both)[(30080, "TCP")].allow == SourceSet.everyone()


# --- ports ----------------------------------------------------------------------------------


def _rule(ports: list[Obj] | None, *cidrs: str) -> Obj:
    rule: Obj = {"from": ip_from(*cidrs)} if cidrs else {}
    if ports is not None:
        rule["ports"] = ports
    return rule


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (None, True),
        ([], True),
        ([{}], True),  # protocol defaults to TCP, no port = all TCP ports
        ([{"protocol": "TCP"}], True),
        ([{"protocol": "UDP"}], False),
        ([{"protocol": "SCTP"}], False),
        ([{"port": 8080}], True),
        ([{"port": 80}], False),  # the Service port, not the pod port
        ([{"port": 30080}], False),  # the NodePort, not the pod port
        ([{"port": 8000, "endPort": 8080}], True),
        ([{"port": 8080, "endPort": 9000}], True),
        ([{"port": 8081, "endPort": 9000}], False),
        ([{"port": 30000, "endPort": 32767}], False),
        ([{"port": "http"}], True),
        ([{"port": "http", "protocol": "UDP"}], False),
        ([{"port": "metrics"}], False),
        ([{"port": "8080"}], True),
        ([{"port": 9090}, {"port": 8080, "protocol": "TCP"}], True),
    ],
)
def test_port_coverage(ports: list[Obj] | None, expected: bool) -> None:
    view = web_view([policy("p", {"podSelector": {}, "ingress": [_rule(ports, "192.0.2.0/24")]})])
    assert allowed(view, 30080, "192.0.2.1") is expected
    assert allowed(view, 30080, "198.51.100.1") is False


@pytest.mark.parametrize("protocol", ["UDP", "SCTP"])
def test_non_tcp_service_ports(protocol: str) -> None:
    port = {"port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": protocol}
    pods = [pod("dns", {"app": "web"}, [{"name": "dns", "containerPort": 5353, "protocol": protocol}])]
    svc = [service("web", {"app": "web"}, [port])]
    by_number = web_view(
        [policy("p", {"podSelector": {}, "ingress": [_rule([{"port": 5353, "protocol": protocol}], "192.0.2.0/24")]})],
        pods,
        svc,
    )
    assert allowed(by_number, 30053, "192.0.2.9", protocol)
    by_name_default_tcp = web_view(
        [policy("p", {"podSelector": {}, "ingress": [_rule([{"port": "dns"}], "192.0.2.0/24")]})], pods, svc
    )
    assert not allowed(by_name_default_tcp, 30053, "192.0.2.9", protocol)
    tcp_only = web_view([policy("p", {"podSelector": {}, "ingress": [_rule([{"protocol": "TCP"}])]})], pods, svc)
    assert not allowed(tcp_only, 30053, "192.0.2.9", protocol)


def test_named_target_port_resolved_per_pod() -> None:
    # The Service's targetPort "http" is 8080 on one pod and 9090 on the other.
    pods = [
        pod("a", {"app": "web"}, [{"name": "http", "containerPort": 8080}]),
        pod("b", {"app": "web"}, [{"name": "http", "containerPort": 9090}]),
    ]
    svc = [service("web", {"app": "web"}, [{"port": 80, "targetPort": "http", "nodePort": 30080}])]
    spec = {
        "podSelector": {},
        "ingress": [
            _rule([{"port": 8080}], "192.0.2.0/24"),
            _rule([{"port": 9090}], "192.0.2.0/25", "198.51.100.0/24"),
        ],
    }
    view = web_view([policy("p", spec)], pods, svc)
    assert allowed(view, 30080, "192.0.2.1")
    assert not allowed(view, 30080, "192.0.2.200")  # pod b does not accept it
    assert not allowed(view, 30080, "198.51.100.1")  # pod a does not accept it
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet(False, (CidrRule("192.0.2.0/25"),))


def test_named_policy_port_resolved_per_pod_when_pods_disagree() -> None:
    # Service targets 8080 numerically; only pod a names 8080 "http", so only pod a is covered.
    pods = [
        pod("a", {"app": "web"}, [{"name": "http", "containerPort": 8080}]),
        pod("b", {"app": "web"}, [{"name": "http", "containerPort": 9090}, {"name": "alt", "containerPort": 8080}]),
    ]
    view = web_view([policy("p", {"podSelector": {}, "ingress": [_rule([{"port": "http"}], "192.0.2.0/24")]})], pods)
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet.nobody()
    only_a = web_view(
        [
            policy(
                "p",
                {"podSelector": {"matchLabels": {"x": "1"}}, "ingress": [_rule([{"port": "http"}], "192.0.2.0/24")]},
            )
        ],
        [pod("a", {"app": "web", "x": "1"}, [{"name": "http", "containerPort": 8080}]), pods[1]],
    )
    assert allowed(only_a, 30080, "192.0.2.1")
    assert not allowed(only_a, 30080, "203.0.113.1")


def test_unresolvable_named_target_port_pod_is_not_an_endpoint() -> None:
    pods = [
        pod("a", {"app": "web"}, [{"name": "http", "containerPort": 8080}]),
        pod("b", {"app": "web"}, []),  # no "http": not an endpoint of this port
    ]
    svc = [service("web", {"app": "web"}, [{"port": 80, "targetPort": "http", "nodePort": 30080}])]
    view = web_view([policy("p", {"podSelector": {}, "ingress": [_rule([{"port": 8080}], "192.0.2.0/24")]})], pods, svc)
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet(False, (CidrRule("192.0.2.0/24"),))
    none_resolve = web_view([policy("p", {"podSelector": {}, "ingress": [{}]})], [pods[1]], svc)
    assert verdicts(none_resolve)[(30080, "TCP")].allow == SourceSet.nobody()


def test_missing_target_port_and_protocol_default() -> None:
    svc = [service("web", {"app": "web"}, [{"port": 8080, "nodePort": 30080}])]
    view = web_view(
        [policy("p", {"podSelector": {}, "ingress": [_rule([{"port": 8080}], "192.0.2.0/24")]})], services=svc
    )
    assert allowed(view, 30080, "192.0.2.1") and not allowed(view, 30080, "198.51.100.1")


# --- sources --------------------------------------------------------------------------------


def test_union_across_policies_and_no_cross_product_between_rules() -> None:
    pods = [pod("web-1", {"app": "web"}, [HTTP, {"name": "admin", "containerPort": 9000}])]
    svc = [
        service(
            "web",
            {"app": "web"},
            [dict(WEB_PORT), {"name": "admin", "port": 9000, "targetPort": 9000, "nodePort": 30090}],
        )
    ]
    spec = {
        "podSelector": {},
        "ingress": [_rule([{"port": 8080}], "192.0.2.0/24"), _rule([{"port": 9000}], "198.51.100.0/24")],
    }
    other = {"podSelector": {}, "ingress": [_rule([{"port": 8080}], "203.0.113.0/24")]}
    view = web_view([policy("a", spec), policy("b", other)], pods, svc)
    assert allowed(view, 30080, "192.0.2.1") and allowed(view, 30080, "203.0.113.1")
    assert not allowed(view, 30080, "198.51.100.1")  # that network is paired with port 9000 only
    assert allowed(view, 30090, "198.51.100.1")
    assert not allowed(view, 30090, "192.0.2.1") and not allowed(view, 30090, "203.0.113.1")


def test_except_keeps_the_users_cidr_minus_except_form() -> None:
    spec = {"podSelector": {}, "ingress": [{"from": ip_from("198.51.100.0/24", excepts=["198.51.100.64/26"])}]}
    view = web_view([policy("p", spec)])
    allow = verdicts(view)[(30080, "TCP")].allow
    assert allow == SourceSet(False, (CidrRule("198.51.100.0/24", ("198.51.100.64/26",)),))
    assert allowed(view, 30080, "198.51.100.63") and not allowed(view, 30080, "198.51.100.64")


def test_except_reallowed_by_another_rule_gives_collapsed_prefixes() -> None:
    spec: Obj = {
        "podSelector": {},
        "ingress": [
            {"from": ip_from("192.0.2.0/24", excepts=["192.0.2.0/28"])},
            {"from": ip_from("192.0.2.4/32")},
        ],
    }
    allow = verdicts(web_view([policy("p", spec)]))[(30080, "TCP")].allow
    assert not allow.all_sources and all(not c.excepts for c in allow.cidrs)
    nets = [ipaddress.ip_network(c.cidr) for c in allow.cidrs]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    assert source_set_contains(allow, "192.0.2.4") and not source_set_contains(allow, "192.0.2.5")
    assert source_set_contains(allow, "192.0.2.16")


def test_selector_peers_never_match_external_clients() -> None:
    spec: Obj = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {}}]}]}
    assert verdicts(web_view([policy("p", spec)]))[(30080, "TCP")].allow == SourceSet.nobody()


def test_empty_from_means_all_sources() -> None:
    view = web_view([policy("p", {"podSelector": {}, "ingress": [{"from": [], "ports": [{"port": 8080}]}]})])
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet.everyone()


def test_families_do_not_mix() -> None:
    v4_all = web_view([policy("p", {"podSelector": {}, "ingress": [{"from": ip_from("0.0.0.0/0")}]})])
    assert allowed(v4_all, 30080, "203.0.113.1") and not allowed(v4_all, 30080, "2001:db8::1")
    v6_all = web_view([policy("p", {"podSelector": {}, "ingress": [{"from": ip_from("::/0")}]})])
    assert allowed(v6_all, 30080, "2001:db8::1") and not allowed(v6_all, 30080, "203.0.113.1")
    both = web_view([policy("p", {"podSelector": {}, "ingress": [{"from": ip_from("0.0.0.0/0", "::/0")}]})])
    assert verdicts(both)[(30080, "TCP")].allow == SourceSet.everyone()


def test_dual_stack_service_families_and_blocks() -> None:
    svc = [service("web", {"app": "web"}, [dict(WEB_PORT)], ip_families=["IPv6", "IPv4"])]
    spec = {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.0/24", "2001:db8:1::/48")}]}
    verdict = verdicts(web_view([policy("p", spec)], services=svc))[(30080, "TCP")]
    assert verdict.ip_families == ("IPv4", "IPv6")
    assert verdict.allow == SourceSet(False, (CidrRule("192.0.2.0/24"), CidrRule("2001:db8:1::/48")))
    default = verdicts(web_view([policy("p", spec)]))[(30080, "TCP")]
    assert default.ip_families == ("IPv4",)


def test_stored_cidr_with_host_bits_is_masked_like_the_dataplane() -> None:
    view = web_view([policy("p", {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.77/24")}]})])
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet(False, (CidrRule("192.0.2.0/24"),))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"cidr": "10.0.0.1/8"}, "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
        ({"cidr": "2001:db8::1/32"}, "2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"),
        ({"cidr": "192.0.2.0/24", "except": ["192.0.2.1/24"]}, "host bits set"),
        ({"cidr": "192.0.2.0/24", "except": ["198.51.100.0/28"]}, "not strictly inside"),
        ({"cidr": "192.0.2.0/24", "except": ["192.0.2.0/24"]}, "not strictly inside"),
        ({"cidr": "192.0.2.0/24", "except": ["2001:db8::/64"]}, "not strictly inside"),
        ({"cidr": "192.0.2.0/33"}, "not a valid CIDR"),
        ({"cidr": "192.0.2.0"}, "not a valid CIDR"),
        ({"cidr": "192.0.2.0/255.255.255.0"}, "not a valid CIDR"),
        ({"cidr": "banana/8"}, "not a valid CIDR"),
        ({"cidr": 7}, "expected a CIDR string"),
    ],
)
def test_strict_ip_block_errors(block: Obj, message: str) -> None:
    with pytest.raises(SemanticsError) as err:
        compile_ip_block(block, "spec.ingress[0].from[1].ipBlock", strict=True)
    assert message in str(err.value)
    assert str(err.value).startswith("spec.ingress[0].from[1].ipBlock.")


# --- services and coverage ------------------------------------------------------------------


def test_partial_coverage_fails_closed() -> None:
    pods = [pod("canary", {"app": "web", "track": "canary"}, [HTTP]), pod("stable", {"app": "web"}, [HTTP])]
    spec = {"podSelector": {"matchLabels": {"track": "canary"}}, "ingress": [{"from": ip_from("192.0.2.0/24")}]}
    view = web_view([policy("p", spec)], pods)
    assert allowed(view, 30080, "192.0.2.1") and not allowed(view, 30080, "198.51.100.1")


def test_two_policies_on_disjoint_pods_intersect() -> None:
    pods = [pod("a", {"app": "web", "k": "a"}, [HTTP]), pod("b", {"app": "web", "k": "b"}, [HTTP])]
    pa = policy("pa", {"podSelector": {"matchLabels": {"k": "a"}}, "ingress": [{"from": ip_from("192.0.2.0/24")}]})
    pb = policy("pb", {"podSelector": {"matchLabels": {"k": "b"}}, "ingress": [{"from": ip_from("192.0.2.128/25")}]})
    view = web_view([pa, pb], pods)
    resolution = resolve_namespace("default", view)
    assert resolution.verdicts_for("pa") == resolution.verdicts_for("pb")
    assert resolution.verdicts_for("pa")[0].allow == SourceSet(False, (CidrRule("192.0.2.128/25"),))


def test_terminal_pods_are_not_backends() -> None:
    pods = [pod("a", {"app": "web"}, [HTTP]), pod("old", {"app": "web", "x": "1"}, [HTTP], phase="Succeeded")]
    spec = {"podSelector": {"matchLabels": {"x": "1"}}, "ingress": []}
    assert verdicts(web_view([policy("p", spec)], pods)) == {}


def test_service_types_health_check_and_selectorless_services() -> None:
    deny = policy("deny", {"podSelector": {}, "ingress": []})
    services = [
        service("np", {"app": "web"}, [dict(WEB_PORT)]),
        service(
            "lb",
            {"app": "web"},
            [{"port": 443, "targetPort": 8443, "nodePort": 31443}],
            type_="LoadBalancer",
            health_check_node_port=32101,
        ),
        service("cip", {"app": "web"}, [{"port": 81, "targetPort": 8080}], type_="ClusterIP"),
        service("cip-np", {"app": "web"}, [{"port": 82, "targetPort": 8080, "nodePort": 30082}], type_="ClusterIP"),
        service("nosel", None, [{"port": 83, "targetPort": 8080, "nodePort": 30083}]),
        service("lb-no-np", {"app": "web"}, [{"port": 84, "targetPort": 8080}], type_="LoadBalancer"),
    ]
    found = verdicts(web_view([deny], services=services))
    assert sorted(found) == [(30080, "TCP"), (31443, "TCP")]
    assert found[(31443, "TCP")].service == "lb" and found[(31443, "TCP")].service_port == 443
    assert all(v.allow == SourceSet.nobody() for v in found.values())


def test_multi_port_service_only_covered_port_opens() -> None:
    svc = [
        service(
            "web",
            {"app": "web"},
            [dict(WEB_PORT), {"name": "https", "port": 443, "targetPort": 8443, "nodePort": 30443}],
        )
    ]
    pods = [pod("web-1", {"app": "web"}, [HTTP, {"name": "https", "containerPort": 8443}])]
    view = web_view(
        [policy("p", {"podSelector": {}, "ingress": [_rule([{"port": "http"}], "192.0.2.0/24")]})], pods, svc
    )
    assert allowed(view, 30080, "192.0.2.1")
    assert not allowed(view, 30443, "192.0.2.1")


def test_same_nodeport_number_tcp_and_udp_are_separate() -> None:
    ports = [
        {"name": "dns-tcp", "port": 53, "nodePort": 30053, "protocol": "TCP"},
        {"name": "dns-udp", "port": 53, "nodePort": 30053, "protocol": "UDP"},
    ]
    svc = [service("dns", {"app": "web"}, ports)]
    view = web_view(
        [policy("p", {"podSelector": {}, "ingress": [_rule([{"port": 53}], "198.51.100.0/24")]})], services=svc
    )
    found = verdicts(view)
    assert source_set_contains(found[(30053, "TCP")].allow, "198.51.100.1")
    assert found[(30053, "UDP")].allow == SourceSet.nobody()


def test_policy_namespace_scoping() -> None:
    view = StaticClusterView(
        services=[
            service("web", {"app": "web"}, [dict(WEB_PORT)]),
            service("web", {"app": "web"}, [dict(WEB_PORT, nodePort=30081)], namespace="b"),
        ],
        pods=[pod("w", {"app": "web"}, [HTTP]), pod("w", {"app": "web"}, [HTTP], namespace="b")],
        policies=[policy("deny", {"podSelector": {}, "ingress": []})],
    )
    assert sorted(verdicts(view)) == [(30080, "TCP")]
    assert verdicts(view, "b") == {}


def test_policy_that_selects_no_backing_pod_gets_no_verdict() -> None:
    other = policy("other", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []})
    deny = policy("deny", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []})
    resolution = resolve_namespace(
        "default", web_view([other, deny], [pod("w", {"app": "web"}, [HTTP]), pod("d", {"app": "db"})])
    )
    assert resolution.policies == ("deny", "other")
    assert resolution.verdicts_for("other") == ()
    assert len(resolution.verdicts_for("deny")) == 1


def test_replace_and_remove() -> None:
    stored = policy("p", {"podSelector": {}, "ingress": []}, uid="u-1")
    view = web_view([stored])
    assert verdicts(view)[(30080, "TCP")].allow == SourceSet.nobody()
    opened = policy("p", {"podSelector": {}, "ingress": [{}]})
    assert resolve_namespace("default", view, replace=opened).verdicts_for("p")[0].allow == SourceSet.everyone()
    added = policy("q", {"podSelector": {}, "ingress": [{"from": ip_from("192.0.2.0/24")}]})
    res = resolve_namespace("default", view, replace=added)
    assert res.policies == ("p", "q")
    assert res.verdicts_for("p")[0].allow == SourceSet(False, (CidrRule("192.0.2.0/24"),))
    assert resolve_namespace("default", view, remove=("default", "p")).policies == ()
    assert resolve_namespace("default", view, remove=("other", "p")).policies == ("p",)
    assert resolve_namespace("default", view).uids == {"p": "u-1"}


def test_resolve_policy_agrees_with_resolve_namespace() -> None:
    pods = [
        pod("a", {"app": "web", "tier": "front"}, [HTTP]),
        pod("b", {"app": "web"}, [HTTP]),
        pod("c", {"app": "api", "tier": "front"}, [{"name": "http", "containerPort": 9000}]),
    ]
    services = [
        service("web", {"app": "web"}, [dict(WEB_PORT)]),
        service("api", {"app": "api"}, [{"port": 80, "targetPort": "http", "nodePort": 30090}]),
    ]
    policies = [
        policy(
            "front",
            {
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]},
                "ingress": [{"from": ip_from("192.0.2.0/24")}],
            },
        ),
        policy("all", {"podSelector": {}, "ingress": [_rule([{"port": 8080}], "192.0.2.0/25")]}),
        policy("egress", {"podSelector": {}, "policyTypes": ["Egress"]}),
        policy("none", {"podSelector": {"matchLabels": {"app": "nothing"}}}),
    ]
    view = StaticClusterView(services, pods, policies)
    full = resolve_namespace("default", view)
    for name in ("front", "all", "egress", "none"):
        focused = resolve_policy("default", name, view)
        assert focused.verdicts_for(name) == full.verdicts_for(name)
        assert focused.warnings_for(name) == full.warnings_for(name)
    assert len(full.verdicts_for("front")) == 2 and full.verdicts_for("egress") == ()


# --- the index of the static view -----------------------------------------------------------

label_maps = st.dictionaries(st.sampled_from(["app", "tier", "zone"]), st.sampled_from(["a", "b", "c"]), max_size=3)
expressions = st.lists(
    st.one_of(
        st.builds(
            lambda k, op, vs: {"key": k, "operator": op, "values": vs},
            st.sampled_from(["app", "tier", "zone"]),
            st.sampled_from(["In", "NotIn"]),
            st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
        ),
        st.builds(
            lambda k, op: {"key": k, "operator": op},
            st.sampled_from(["app", "tier", "zone"]),
            st.sampled_from(["Exists", "DoesNotExist"]),
        ),
    ),
    max_size=2,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(label_maps, max_size=8), label_maps, expressions)
def test_pods_matching_equals_a_scan(pod_labels: list[dict[str, str]], match: dict[str, str], exprs: list[Obj]) -> None:
    pods = [pod(f"p{i}", labels) for i, labels in enumerate(pod_labels)]
    view = StaticClusterView(pods=pods)
    selector: Obj = {"matchLabels": match, "matchExpressions": exprs}
    expected = [p["metadata"]["name"] for p in pods if selector_matches(selector, p["metadata"]["labels"])]
    assert sorted(p["metadata"]["name"] for p in view.pods_matching("default", selector)) == sorted(expected)
    assert view.pods_matching("elsewhere", selector) == []


# --- source-set arithmetic against brute force ----------------------------------------------


def _networks(version: int) -> st.SearchStrategy[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    bits = 32 if version == 4 else 128
    # A small universe (the top of the space is fixed) so that random sets overlap often, plus
    # a few very wide networks (/0 to /2) covering it.
    base = int(ipaddress.ip_address("192.0.2.0" if version == 4 else "2001:db8::"))
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network

    def build(offset: int, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return make((base + offset, prefix), strict=False)

    return st.builds(build, st.integers(0, 255), st.integers(bits - 8, bits)) | st.builds(
        lambda p: make((base, p), strict=False), st.integers(0, 2)
    )


def _block(version: int) -> st.SearchStrategy[Obj]:
    @st.composite
    def build(draw: Any) -> Obj:
        cidr = draw(_networks(version))
        excepts = [
            e
            for e in draw(st.lists(_networks(version), max_size=3))
            if e.subnet_of(cidr) and e.prefixlen > cidr.prefixlen
        ]
        return {"cidr": str(cidr), "except": [str(e) for e in excepts]}

    return build()


blocks = st.lists(st.one_of(_block(4), _block(6)), max_size=4)


def _in_block(address: ipaddress.IPv4Address | ipaddress.IPv6Address, block: Obj) -> bool:
    net = ipaddress.ip_network(block["cidr"])
    return (
        address.version == net.version
        and address in net
        and not any(address in ipaddress.ip_network(e) for e in block["except"])
    )


def _probes(draw_blocks: list[Obj], extra: list[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses at and around every boundary, plus random ones."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for block in draw_blocks:
        for text in [block["cidr"], *block["except"]]:
            net = ipaddress.ip_network(text)
            top = 2**32 - 1 if net.version == 4 else 2**128 - 1
            for value in (
                int(net.network_address) - 1,
                int(net.network_address),
                int(net.broadcast_address),
                int(net.broadcast_address) + 1,
            ):
                if 0 <= value <= top:
                    out.append(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))
    base4 = int(ipaddress.ip_address("192.0.2.0"))
    base6 = int(ipaddress.ip_address("2001:db8::"))
    out += [ipaddress.IPv4Address(base4 + e % 256) for e in extra]
    out += [ipaddress.IPv6Address(base6 + e % 256) for e in extra]
    return out


@settings(max_examples=200, deadline=None)
@given(blocks, blocks, st.lists(st.integers(0, 2**16), max_size=8))
def test_source_arithmetic_matches_brute_force(a: list[Obj], b: list[Obj], extra: list[int]) -> None:
    def union(bs: list[Obj]) -> Addresses:
        acc = Addresses.nobody()
        for i, blk in enumerate(bs):
            acc = acc.union(compile_ip_block(blk, f"b{i}", strict=True).addresses)
        return acc

    set_a, set_b = union(a), union(b)
    inter = set_a.intersection(set_b)
    compiled = [compile_ip_block(blk, f"b{i}", strict=True) for i, blk in enumerate(a + b)]
    rendered_a = render_source_set(set_a, compiled)
    rendered_inter = render_source_set(inter, compiled)
    for address in _probes(a + b, extra):
        in_a = any(_in_block(address, blk) for blk in a)
        in_b = any(_in_block(address, blk) for blk in b)
        assert set_a.contains(address) is in_a
        assert set_a.union(set_b).contains(address) is (in_a or in_b)
        assert inter.contains(address) is (in_a and in_b)
        assert set_a.difference(set_b).contains(address) is (in_a and not in_b)
        assert source_set_contains(rendered_a, str(address)) is in_a
        assert source_set_contains(rendered_inter, str(address)) is (in_a and in_b)
    for rendered in (rendered_a, rendered_inter):
        if rendered.all_sources:
            continue
        plain = [ipaddress.ip_network(c.cidr) for c in rendered.cidrs if not c.excepts]
        assert all(not x.overlaps(y) for i, x in enumerate(plain) for y in plain[i + 1 :])
        assert list(rendered.cidrs) == sorted(rendered.cidrs)


def test_single_block_result_keeps_its_form_only_when_exact() -> None:
    block = compile_ip_block({"cidr": "192.0.2.0/24", "except": ["192.0.2.0/26"]}, "b", strict=True)
    assert render_source_set(block.addresses, [block]) == SourceSet(
        False, (CidrRule("192.0.2.0/24", ("192.0.2.0/26",)),)
    )
    narrower = block.addresses.intersection(Addresses.of_networks([ipaddress.ip_network("192.0.2.128/25")]))
    assert render_source_set(narrower, [block]) == SourceSet(False, (CidrRule("192.0.2.128/25"),))
    assert render_source_set(Addresses.nobody(), [block]) == SourceSet.nobody()
    assert render_source_set(Addresses.everyone(), [block]) == SourceSet.everyone()
