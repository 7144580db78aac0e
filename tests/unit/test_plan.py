"""Unit and property tests of enforcer.plan (pure)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import Annotation, CidrRule, IPFamily, NodePortVerdict, PolicyRef, Protocol, SourceSet
from enforcer.plan import (
    DesiredState,
    PortKey,
    ProtectedPort,
    decode_state,
    encode_state,
    plan_desired_state,
)

N = ipaddress.ip_network


def verdict(
    port: int, allow: SourceSet, families: tuple[IPFamily, ...] = ("IPv4",), proto: Protocol = "TCP"
) -> NodePortVerdict:
    return NodePortVerdict(port, proto, "svc", 80, families, allow)


def ann(*verdicts: NodePortVerdict, name: str = "p") -> Annotation:
    # Version-1 annotations (namespace-wide verdicts): the enforcer intersects them, fail closed.
    # How version-2 parts compose is tested in test_composition.py and test_incremental.py.
    return Annotation(PolicyRef("ns", name, ""), tuple(v.entry("verdict") for v in verdicts), version=1)


def cidrs(*rules: tuple[str, tuple[str, ...]] | str) -> SourceSet:
    return SourceSet(False, tuple(CidrRule(r) if isinstance(r, str) else CidrRule(r[0], r[1]) for r in rules))


def test_deny_all_is_protected_with_no_allowed_prefix() -> None:
    result = plan_desired_state([ann(verdict(30080, SourceSet.nobody()))])
    assert result.state.ports == (ProtectedPort(PortKey(4, "TCP", 30080), ()),)
    assert result.rejected == ()


def test_allow_all_is_not_protected() -> None:
    assert plan_desired_state([ann(verdict(30080, SourceSet.everyone(), ("IPv4", "IPv6")))]).state == DesiredState()
    # Two halves that together cover the family are "everyone" as well.
    halves = cidrs("0.0.0.0/1", "128.0.0.0/1")
    assert plan_desired_state([ann(verdict(30080, halves))]).state == DesiredState()


def test_cidr_minus_except_is_exact_and_collapsed() -> None:
    allow = cidrs(("198.51.100.0/24", ("198.51.100.10/32", "198.51.100.128/25")))
    state = plan_desired_state([ann(verdict(30080, allow))]).state
    want = [N("198.51.100.0/29"), N("198.51.100.8/31"), N("198.51.100.11/32"), N("198.51.100.12/30"),
            N("198.51.100.16/28"), N("198.51.100.32/27"), N("198.51.100.64/26")]
    assert state.as_dict() == {PortKey(4, "TCP", 30080): tuple(want)}


def test_overlapping_and_adjacent_cidrs_collapse() -> None:
    allow = cidrs("198.51.100.0/25", "198.51.100.128/25", "198.51.100.7/32")
    assert plan_desired_state([ann(verdict(30080, allow))]).state.as_dict() == {
        PortKey(4, "TCP", 30080): (N("198.51.100.0/24"),)
    }


def test_disagreeing_annotations_intersect_fail_closed() -> None:
    a = ann(verdict(30080, cidrs("198.51.100.0/24", "203.0.113.0/25")), name="a")
    b = ann(verdict(30080, cidrs("198.51.100.0/25", "203.0.113.128/25")), name="b")
    c = ann(verdict(30080, SourceSet.everyone()), name="c")
    state = plan_desired_state([a, b, c]).state
    assert state.as_dict() == {PortKey(4, "TCP", 30080): (N("198.51.100.0/25"),)}
    # One deny-all annotation denies everything, whatever the others allow.
    denied = plan_desired_state([a, b, ann(verdict(30080, SourceSet.nobody()), name="d")]).state
    assert denied.as_dict() == {PortKey(4, "TCP", 30080): ()}


def test_families_are_separate() -> None:
    allow = cidrs("198.51.100.0/24", "2001:db8:1::/64")
    state = plan_desired_state([ann(verdict(30080, allow, ("IPv4", "IPv6")))]).state
    assert state.as_dict() == {
        PortKey(4, "TCP", 30080): (N("198.51.100.0/24"),),
        PortKey(6, "TCP", 30080): (N("2001:db8:1::/64"),),
    }
    # Listed for IPv6 only: IPv4 stays unprotected, and an IPv4-only allow-list denies all of IPv6.
    v6 = plan_desired_state([ann(verdict(30080, cidrs("198.51.100.0/24"), ("IPv6",)))]).state
    assert v6.as_dict() == {PortKey(6, "TCP", 30080): ()}


def test_protocols_are_separate() -> None:
    state = plan_desired_state(
        [ann(verdict(30080, SourceSet.nobody(), proto="UDP"), verdict(30080, cidrs("203.0.113.0/24")))]
    ).state
    assert state.as_dict() == {
        PortKey(4, "TCP", 30080): (N("203.0.113.0/24"),),
        PortKey(4, "UDP", 30080): (),
    }


@pytest.mark.parametrize("port", [1, 22, 6443, 10250, 29999, 32768, 65535])
def test_ports_outside_the_range_are_refused_and_reported(port: int) -> None:
    result = plan_desired_state([ann(verdict(port, SourceSet.nobody()), verdict(30000, SourceSet.nobody()))])
    assert [p.key.port for p in result.state.ports] == [30000]
    assert len(result.rejected) == 1
    r = result.rejected[0]
    assert (r.namespace, r.name, r.node_port, r.protocol) == ("ns", "p", port, "TCP")
    assert "outside the NodePort range 30000-32767" in r.reason


def test_range_bounds_are_inclusive_and_configurable() -> None:
    nobody = SourceSet.nobody()
    anns = [ann(verdict(30000, nobody), verdict(32767, nobody), verdict(20000, nobody))]
    assert [p.key.port for p in plan_desired_state(anns).state.ports] == [30000, 32767]
    custom = plan_desired_state(anns, (20000, 30000))
    assert [p.key.port for p in custom.state.ports] == [20000, 30000]
    assert [r.node_port for r in custom.rejected] == [32767]
    with pytest.raises(ValueError, match="nodeport_range"):
        plan_desired_state(anns, (32767, 30000))


def test_deterministic_whatever_the_order() -> None:
    anns = [
        ann(verdict(30081, cidrs("203.0.113.0/24"), ("IPv4", "IPv6")), verdict(80, SourceSet.nobody()), name="a"),
        ann(verdict(30080, cidrs("2001:db8::/48", "198.51.100.0/24"), ("IPv6", "IPv4")), name="b"),
        ann(verdict(30081, cidrs("203.0.113.128/25")), verdict(22, SourceSet.nobody()), name="c"),
    ]
    results = {encode_state(plan_desired_state(list(p)).state) for p in itertools.permutations(anns)}
    rejected = {plan_desired_state(list(p)).rejected for p in itertools.permutations(anns)}
    assert len(results) == 1 and len(rejected) == 1


def test_state_json_round_trip_and_validation() -> None:
    state = plan_desired_state(
        [ann(verdict(30080, cidrs("198.51.100.0/24", "2001:db8:1::/64"), ("IPv4", "IPv6"), "UDP"))]
    ).state
    assert decode_state(encode_state(state)) == state
    with pytest.raises(ValueError, match="ports\\[0\\]"):
        decode_state('{"ports":[{"family":5,"protocol":"TCP","port":1,"allowed":[]}]}')
    with pytest.raises(ValueError, match="must be IPv6"):
        decode_state('{"ports":[{"family":6,"protocol":"TCP","port":30000,"allowed":["198.51.100.0/24"]}]}')


def test_desired_state_rejects_unnormalized_values() -> None:
    key = PortKey(4, "TCP", 30080)
    with pytest.raises(ValueError, match="sorted"):
        DesiredState((ProtectedPort(PortKey(4, "TCP", 30081), ()), ProtectedPort(key, ())))
    with pytest.raises(ValueError, match="wrong IP family"):
        DesiredState((ProtectedPort(key, (N("2001:db8::/32"),)),))
    with pytest.raises(ValueError, match="every source"):
        DesiredState((ProtectedPort(key, (N("0.0.0.0/0"),)),))
    # from_mapping() is the normalizer: collapsed, sorted, and "everyone" dropped.
    assert DesiredState.from_mapping({key: [N("198.51.100.128/25"), N("198.51.100.0/25")]}).ports == (
        ProtectedPort(key, (N("198.51.100.0/24"),)),
    )
    assert DesiredState.from_mapping({key: [N("0.0.0.0/1"), N("128.0.0.0/1")]}) == DesiredState()


# --- property test against a brute-force per-address check -------------------------------------

V4_BLOCKS = (N("198.51.100.0/24"), N("203.0.113.0/24"))
V6_BLOCK = N("2001:db8::/32")


@st.composite
def prefix(draw: st.DrawFn, family: int) -> str:
    if family == 4:
        block = draw(st.sampled_from(V4_BLOCKS))
        plen = draw(st.integers(24, 32))
    else:
        block = V6_BLOCK
        plen = draw(st.integers(32, 128))
    offset = draw(st.integers(0, block.num_addresses - 1))
    addr = ipaddress.ip_address(int(block.network_address) + offset)
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


@st.composite
def cidr_rule(draw: st.DrawFn) -> CidrRule:
    family = draw(st.sampled_from((4, 6)))
    cidr = N(draw(prefix(family)))
    excepts = []
    for _ in range(draw(st.integers(0, 2))):
        plen = draw(st.integers(cidr.prefixlen, cidr.max_prefixlen))
        offset = draw(st.integers(0, cidr.num_addresses - 1))
        addr = ipaddress.ip_address(int(cidr.network_address) + offset)
        excepts.append(str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))
    return CidrRule(str(cidr), tuple(excepts))


source_sets = st.one_of(
    st.just(SourceSet.everyone()),
    st.builds(lambda rules: SourceSet(False, tuple(rules)), st.lists(cidr_rule(), max_size=3)),
)
families = st.sampled_from((("IPv4",), ("IPv6",), ("IPv4", "IPv6")))
ports = st.sampled_from((30000, 30001, 32767, 80))


@st.composite
def annotation(draw: st.DrawFn) -> Annotation:
    chosen = draw(st.lists(st.tuples(ports, st.sampled_from(("TCP", "UDP"))), unique=True, max_size=3))
    verdicts = tuple(verdict(p, draw(source_sets), draw(families), proto) for p, proto in chosen)  # type: ignore[arg-type]
    return ann(*verdicts, name=draw(st.sampled_from(("a", "b", "c"))))


def _accepts(allow: SourceSet, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if allow.all_sources:
        return True
    for rule in allow.cidrs:
        net = N(rule.cidr)
        if net.version == addr.version and addr in net and not any(addr in N(e) for e in rule.excepts):
            return True
    return False


def _probe_addresses(anns: list[Annotation]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every prefix's first and last address and their neighbours, clipped to the documentation blocks."""
    blocks = (*V4_BLOCKS, V6_BLOCK)
    probes: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for b in blocks:
        probes |= {b.network_address, b.broadcast_address}
    for a in anns:
        for v in a.node_ports:
            for rule in v.allow.cidrs:
                for text in (rule.cidr, *rule.excepts):
                    net = N(text)
                    for x in (int(net.network_address) - 1, int(net.network_address),
                              int(net.broadcast_address), int(net.broadcast_address) + 1):
                        addr = ipaddress.ip_address(x) if net.version == 4 else ipaddress.IPv6Address(x)
                        if any(addr in b for b in blocks if b.version == addr.version):
                            probes.add(addr)
    return probes


@settings(max_examples=300, deadline=None)
@given(st.lists(annotation(), max_size=4), st.lists(st.integers(0, 255), max_size=8))
def test_plan_matches_brute_force_per_address(anns: list[Annotation], extra: list[int]) -> None:
    result = plan_desired_state(anns)
    state = result.state.as_dict()
    probes = _probe_addresses(anns) | {ipaddress.ip_address(f"203.0.113.{x}") for x in extra}
    listed = {
        PortKey(4 if fam == "IPv4" else 6, v.protocol, v.node_port)
        for a in anns for v in a.node_ports if 30000 <= v.node_port <= 32767 for fam in v.ip_families
    }
    assert set(state) <= listed
    assert all(p.key.port != 80 for p in result.state.ports)
    assert {r.node_port for r in result.rejected} <= {80}
    for key in listed:
        verdicts = [
            v for a in anns for v in a.node_ports
            if v.node_port == key.port and v.protocol == key.protocol
            and ("IPv4" if key.family == 4 else "IPv6") in v.ip_families
        ]
        for addr in (p for p in probes if p.version == key.family):
            expected = all(_accepts(v.allow, addr) for v in verdicts)
            got = key not in state or any(addr in net for net in state[key])
            assert got == expected, (key, addr)
    for p in result.state.ports:
        nets = p.allowed
        assert list(nets) == sorted(nets)
        assert all(int(a.broadcast_address) < int(b.network_address) for a, b in itertools.pairwise(nets))
