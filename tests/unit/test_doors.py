"""Doors: the contract's doors value, which addresses are doors, and the same verdict as the NodePort (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    CidrRule,
    ContractError,
    Door,
    NodePortEntry,
    PodGroup,
    PolicyRef,
    SourceSet,
)
from contract.composition import Part, compose, everything, part_of, source_intervals
from contract.doors import (
    DOORS_KEY,
    DOORS_SIGNATURE_KEY,
    DoorsAnnotation,
    decode_doors,
    encode_doors,
    read_signed_doors,
    render_all,
)
from contract.intervals import Intervals, intersect
from contract.signing import Signer
from tests import builders as b
from webhook.admission import render_policy_annotations
from webhook.contribution import resolve_contribution
from webhook.doors import node_address_set, service_doors
from webhook.namespace_resolution import resolve_namespace
from webhook.semantics import compile_policy
from webhook.snapshot import StaticClusterView

KEY = Signer.from_seed(b"unit-test-signing-key-0123456789")
REF = PolicyRef("shop", "allow-office", "uid-1")
OFFICE = SourceSet(all_sources=False, cidrs=(CidrRule("198.51.100.0/24"),))


def _entry(doors: tuple[Door, ...], node_port: int = 30080, **kw: Any) -> NodePortEntry:
    fields: dict[str, Any] = {
        "node_port": node_port, "protocol": "TCP", "service": "web", "service_port": 8080,
        "ip_families": ("IPv4", "IPv6"), "scope": "all", "allow": OFFICE, "doors": doors,
    }
    fields.update(kw)
    return NodePortEntry(**fields)


LB = Door("198.51.100.200", "loadBalancer")
EXT6 = Door("2001:db8:5::200", "externalIP")


# --- the doors value --------------------------------------------------------------------------


def test_encode_is_canonical_and_round_trips() -> None:
    doors = DoorsAnnotation(REF, (_entry((LB, EXT6)),))
    value = encode_doors(doors)
    obj = json.loads(value)
    assert obj["version"] == 4 and obj["mode"] == "enforce"
    assert obj["doors"][0]["addresses"] == [
        {"ip": "198.51.100.200", "source": "loadBalancer"},
        {"ip": "2001:db8:5::200", "source": "externalIP"},
    ]
    assert decode_doors(value) == doors
    assert encode_doors(decode_doors(value)) == value
    # The same order of doors whatever the order given.
    assert encode_doors(DoorsAnnotation(REF, (_entry((EXT6, LB)),))) == value


def test_a_door_only_port_has_node_port_zero() -> None:
    doors = DoorsAnnotation(REF, (_entry((LB,), node_port=0),))
    assert decode_doors(encode_doors(doors)).entries[0].node_port == 0


def test_groups_round_trip() -> None:
    entry = _entry((LB,), scope="some", allow=SourceSet.nobody(),
                   groups=(PodGroup("0" * 32, OFFICE), PodGroup("1" * 32, None)))
    doors = DoorsAnnotation(REF, (entry,), mode="audit")
    assert decode_doors(encode_doors(doors)) == doors


def _mutated(change: Any) -> str:
    obj = json.loads(encode_doors(DoorsAnnotation(REF, (_entry((LB, EXT6)),))))
    change(obj)
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda o: o.update(version=3), "$.version"),
        (lambda o: o.update(extra=1), "$"),
        (lambda o: o.pop("mode"), "$"),
        (lambda o: o.update(mode="loud"), "$.mode"),
        (lambda o: o["doors"][0].pop("addresses"), "$.doors[0]"),
        (lambda o: o["doors"][0].update(addresses=[]), "$.doors[0].addresses"),
        (lambda o: o["doors"][0]["addresses"][0].update(ip="198.51.100.300"), "$.doors[0].addresses[0].ip"),
        (lambda o: o["doors"][0]["addresses"][1].update(ip="2001:db8:5:0::200"), "$.doors[0].addresses[1].ip"),
        (lambda o: o["doors"][0]["addresses"][0].update(source="hostname"), "$.doors[0].addresses[0].source"),
        (lambda o: o["doors"][0]["addresses"][0].update(extra=1), "$.doors[0].addresses[0]"),
        (lambda o: o["doors"][0]["addresses"].append(o["doors"][0]["addresses"][0]), "$.doors[0].addresses"),
        (lambda o: o["doors"][0].update(ipFamilies=["IPv4"]), "$.doors[0].addresses[1].ip"),
        (lambda o: o["doors"].append(o["doors"][0]), "$.doors[1]"),
        (lambda o: o["doors"][0].update(nodePort=-1), "$.doors[0].nodePort"),
        (lambda o: o["doors"][0].update(protocol="ICMP"), "$.doors[0].protocol"),
    ],
)
def test_malformed_values_are_refused_naming_the_field(change: Any, field: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_doors(_mutated(change))
    assert info.value.field == field


def test_read_signed_doors_checks_signature_binding_and_form() -> None:
    pair = render_all(REF, (_entry((LB,)),), "enforce", KEY)
    keys = KEY.verifier()
    assert read_signed_doors(pair, "shop", "allow-office", "uid-1", keys) is not None
    assert read_signed_doors({}, "shop", "allow-office", "uid-1", keys) is None
    with pytest.raises(ContractError, match="missing"):
        read_signed_doors({DOORS_KEY: pair[DOORS_KEY]}, "shop", "allow-office", "uid-1", keys)
    with pytest.raises(ContractError, match="stale copy"):
        read_signed_doors(pair, "shop", "allow-office", "uid-2", keys)
    with pytest.raises(ContractError, match="bound to"):
        read_signed_doors(pair, "shop", "other", "uid-1", keys)
    edited = {**pair, DOORS_KEY: pair[DOORS_KEY].replace("198.51.100.0/24", "0.0.0.0/0")}
    with pytest.raises(ContractError) as info:
        read_signed_doors(edited, "shop", "allow-office", "uid-1", keys)
    assert info.value.field == DOORS_SIGNATURE_KEY
    other = Signer.from_seed(b"another-signing-key-0123456789ab")
    with pytest.raises(ContractError):
        read_signed_doors(render_all(REF, (_entry((LB,)),), "enforce", other), "shop", "allow-office", "uid-1", keys)


def test_render_all_keeps_the_nodeport_value_as_it_was() -> None:
    entry = _entry((LB,))
    both = render_all(REF, (entry, _entry((LB,), node_port=0, service="lb-only")), "enforce", KEY)
    without = render_all(REF, (NodePortEntry(**{**_fields(entry), "doors": ()}),), "enforce", KEY)
    assert both[NODEPORTS_KEY] == without[NODEPORTS_KEY]
    assert both[SIGNATURE_KEY] == without[SIGNATURE_KEY]
    assert json.loads(both[NODEPORTS_KEY])["version"] == 2
    assert DOORS_KEY not in without
    assert [e["service"] for e in json.loads(both[DOORS_KEY])["doors"]] == ["lb-only", "web"]
    # A policy whose only entries are doors has no NodePort pair.
    only = render_all(REF, (_entry((LB,), node_port=0),), "enforce", KEY)
    assert set(only) == {DOORS_KEY, DOORS_SIGNATURE_KEY}


def _fields(entry: NodePortEntry) -> dict[str, Any]:
    return {f: getattr(entry, f) for f in entry.__slots__}


# --- which addresses are doors ------------------------------------------------------------------


def _lb(ingress: list[dict[str, Any]], external: list[str] | None = None, families: list[str] | None = None,
        type_: str = "LoadBalancer") -> dict[str, Any]:
    svc = b.service("web", {"app": "web"}, [{"port": 8080, "nodePort": 30080}], type_=type_, ip_families=families)
    if external is not None:
        svc["spec"]["externalIPs"] = external
    svc["status"] = {"loadBalancer": {"ingress": ingress}}
    return svc


def test_lb_ips_with_vip_or_unset_mode_are_doors_proxy_and_hostname_are_not() -> None:
    svc = _lb([{"ip": "198.51.100.200"}, {"ip": "198.51.100.201", "ipMode": "VIP"},
               {"ip": "198.51.100.202", "ipMode": "Proxy"}, {"hostname": "lb.example.com"}])
    assert service_doors(svc, frozenset()) == (
        Door("198.51.100.200", "loadBalancer"), Door("198.51.100.201", "loadBalancer"))


def test_external_ips_are_doors_on_any_service_type_and_families_filter() -> None:
    svc = _lb([], ["198.51.100.201", "2001:db8:5:0::1", "not-an-ip"], families=["IPv4"], type_="ClusterIP")
    assert service_doors(svc, frozenset()) == (Door("198.51.100.201", "externalIP"),)
    dual = _lb([], ["2001:db8:5:0::1"], families=["IPv4", "IPv6"])
    assert service_doors(dual, frozenset()) == (Door("2001:db8:5::1", "externalIP"),)


def test_a_status_ip_on_a_non_loadbalancer_service_is_no_door() -> None:
    assert service_doors(_lb([{"ip": "198.51.100.200"}], type_="NodePort"), frozenset()) == ()


def test_a_node_address_is_never_a_door() -> None:
    nodes = [{"status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"},
                                        {"type": "InternalIP", "address": "2001:db8:0:0::1"},
                                        {"type": "Hostname", "address": "node-a"}]}}]
    addresses = node_address_set(nodes)
    assert addresses == frozenset({"198.51.100.1", "2001:db8::1"})
    svc = _lb([{"ip": "198.51.100.1"}], ["198.51.100.201", "2001:db8::1"], families=["IPv4", "IPv6"])
    assert service_doors(svc, addresses) == (Door("198.51.100.201", "externalIP"),)


def test_ipv4_mapped_and_duplicate_addresses() -> None:
    svc = _lb([{"ip": "198.51.100.201"}], ["::ffff:198.51.100.7", "198.51.100.201"], families=["IPv4", "IPv6"])
    # One door per address (the first source in sorted order); a mapped address is never one.
    assert service_doors(svc, frozenset()) == (Door("198.51.100.201", "externalIP"),)


# --- the webhook names the doors with the NodePort's part ------------------------------------------


def _view(services: list[dict[str, Any]], specs: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None,
          pods: list[dict[str, Any]] | None = None) -> StaticClusterView:
    return StaticClusterView(
        services=services,
        pods=pods if pods is not None else [b.pod("w1", {"app": "web"}, [{"name": "http", "containerPort": 8080}])],
        policies=[b.policy(f"np{i}", s) for i, s in enumerate(specs)],
        nodes=nodes or (),
    )


DENY_ALL = {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_door_only_loadbalancer_gets_the_doors_pair_alone() -> None:
    svc = b.service("lb", {"app": "web"}, [{"port": 8080}], type_="LoadBalancer")
    svc["spec"]["allocateLoadBalancerNodePorts"] = False
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.200"}]}}
    view = _view([svc], [DENY_ALL])
    obj = view.policies_in("default")[0]
    entries = resolve_contribution(compile_policy(obj), obj["spec"]["podSelector"], view)
    assert [(e.node_port, e.doors) for e in entries.entries] == [(0, (Door("198.51.100.200", "loadBalancer"),))]
    assert any("doors 198.51.100.200:8080" in w for w in entries.warnings)
    pair = render_policy_annotations("default", "np0", "", entries.entries, KEY)
    assert set(pair) == {DOORS_KEY, DOORS_SIGNATURE_KEY}


def test_a_service_without_doors_writes_exactly_what_it_wrote_before() -> None:
    svc = b.service("web", {"app": "web"}, [{"port": 8080, "nodePort": 30080}])
    view = _view([svc], [DENY_ALL])
    obj = view.policies_in("default")[0]
    entries = resolve_contribution(compile_policy(obj), obj["spec"]["podSelector"], view).entries
    assert set(render_policy_annotations("default", "np0", "", entries, KEY)) == {NODEPORTS_KEY, SIGNATURE_KEY}


def test_the_warning_names_a_named_target_port_readably() -> None:
    svc = b.service("web", {"app": "web"}, [{"port": 8080, "targetPort": "http", "nodePort": 30080}])
    view = _view([svc], [DENY_ALL])
    obj = view.policies_in("default")[0]
    warnings = resolve_contribution(compile_policy(obj), obj["spec"]["podSelector"], view).warnings
    assert any("on target port 'http' (TCP);" in w for w in warnings), warnings


# --- property: each door composes to the NodePort's namespace-wide verdict -----------------------

DoorKey = tuple[str, int, str, str, int]  # (service, servicePort, protocol, ip, family)


def composed_doors(view: StaticClusterView, namespace: str) -> dict[DoorKey, Intervals]:
    """As the enforcer does: verified doors values, parts per door per Service, intersected over Services."""
    parts: dict[DoorKey, list[Part]] = {}
    for obj in view.policies_in(namespace):
        policy = compile_policy(obj)
        entries = resolve_contribution(policy, (obj.get("spec") or {}).get("podSelector"), view).entries
        pair = render_policy_annotations(namespace, policy.name, "", entries, KEY)
        doors = read_signed_doors(pair, namespace, policy.name, "", KEY.verifier())
        if doors is None:
            continue
        for entry in doors.entries:
            for door in entry.doors:
                family = 6 if ":" in door.ip else 4
                key = (entry.service, entry.service_port, entry.protocol, door.ip, family)
                parts.setdefault(key, []).append(part_of(entry, family, doors.mode))
    return {key: compose(ps, key[4]) for key, ps in parts.items()}


def reference_doors(view: StaticClusterView, namespace: str) -> dict[DoorKey, Intervals]:
    out: dict[DoorKey, Intervals] = {}
    doors = {s["metadata"]["name"]: service_doors(s, view.node_addresses()) for s in view.services_in(namespace)}
    resolution = resolve_namespace(namespace, view)
    for name in resolution.policies:
        for v in resolution.verdicts_for(name):
            for door in doors[v.service]:
                family = 6 if ":" in door.ip else 4
                out[(v.service, v.service_port, v.protocol, door.ip, family)] = source_intervals(v.allow, family)
    return out


LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2)
CIDRS = st.sampled_from(["198.51.100.0/24", "198.51.100.7/32", "203.0.113.0/24", "2001:db8::/64", "0.0.0.0/0"])
RULE = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.builds(lambda c: {"ipBlock": {"cidr": c}}, CIDRS), max_size=2),
        "ports": st.lists(st.sampled_from([{"port": 8080}, {"port": "http"}, {"protocol": "UDP"}]), min_size=1,
                          max_size=2),
    },
)
POLICY_SPEC = st.fixed_dictionaries(
    {"podSelector": st.builds(lambda m: {"matchLabels": m}, LABELS)},
    optional={"ingress": st.lists(RULE, max_size=2)},
)
NODES = [{"status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}}]


@settings(max_examples=300, deadline=None)
@given(
    pods=st.lists(st.tuples(LABELS, st.sampled_from([[{"name": "http", "containerPort": 8080}], []])), max_size=4),
    specs=st.lists(POLICY_SPEC, max_size=4),
    target=st.sampled_from([8080, "http"]),
    allocate=st.booleans(),
    ingress=st.lists(st.sampled_from([{"ip": "198.51.100.200"}, {"ip": "198.51.100.1"}, {"ip": "2001:db8:5::1"},
                                      {"ip": "198.51.100.202", "ipMode": "Proxy"}]), max_size=3),
    external=st.lists(st.sampled_from(["198.51.100.201", "2001:db8:5::2", "198.51.100.1"]), max_size=2),
)
def test_every_door_composes_to_the_nodeport_verdict_of_its_service_port(
    pods: list[tuple[dict[str, str], list[dict[str, Any]]]],
    specs: list[dict[str, Any]],
    target: int | str,
    allocate: bool,
    ingress: list[dict[str, Any]],
    external: list[str],
) -> None:
    ports: list[dict[str, Any]] = [{"port": 8080, "targetPort": target}, {"port": 53, "protocol": "UDP",
                                                                          "targetPort": 8080}]
    if allocate:
        ports[0]["nodePort"], ports[1]["nodePort"] = 30080, 30053
    svc = b.service("web", {"app": "a"}, ports, type_="LoadBalancer", ip_families=["IPv4", "IPv6"])
    svc["spec"]["allocateLoadBalancerNodePorts"] = allocate
    svc["spec"]["externalIPs"] = external
    svc["status"] = {"loadBalancer": {"ingress": ingress}}
    view = StaticClusterView(
        services=[svc],
        pods=[b.pod(f"p{i}", labels, cports) for i, (labels, cports) in enumerate(pods)],
        policies=[b.policy(f"np{i}", spec) for i, spec in enumerate(specs)],
        nodes=NODES,
    )
    mine = composed_doors(view, "default")
    ref = reference_doors(view, "default")
    for key in sorted(set(mine) | set(ref)):
        assert key[3] != "198.51.100.1", "a Node address is never a door"
        whole = everything(key[4])
        assert mine.get(key, whole) == ref.get(key, whole), f"{key}: composed {mine.get(key)} vs {ref.get(key)}"


def test_two_services_naming_one_door_fail_closed() -> None:
    """Kube-proxy sends such a door to one of them: the enforcer intersects both verdicts (enforcer/doors.py);
    here the parts: each Service's composition alone, and their intersection is the narrower."""
    a = source_intervals(OFFICE, 4)
    b_ = source_intervals(SourceSet(all_sources=False, cidrs=(CidrRule("198.51.100.0/25"),)), 4)
    assert intersect(a, b_) == b_


def test_an_ipv4_mapped_ipblock_warns_naming_the_ipv4_cidr_meant() -> None:
    from webhook.services import ipv4_meant

    assert ipv4_meant("::ffff:198.51.100.0/120") == "198.51.100.0/24"
    assert ipv4_meant("::ffff:198.51.100.7/128") == "198.51.100.7/32"
    assert ipv4_meant("2001:db8::/64") is None and ipv4_meant("::/0") is None
    svc = b.service("web", {"app": "web"}, [{"port": 8080, "nodePort": 30080}], ip_families=["IPv4", "IPv6"])
    spec = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "::ffff:198.51.100.0/120"}}]}]}
    view = _view([svc], [spec])
    obj = view.policies_in("default")[0]
    warnings = resolve_contribution(compile_policy(obj), obj["spec"]["podSelector"], view).warnings
    assert any("IPv4-mapped" in w and "write 198.51.100.0/24" in w for w in warnings), warnings
