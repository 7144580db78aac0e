"""Per-policy contributions composed as the enforcer does equal the namespace-wide verdicts.

The reference is `namespace_resolution.resolve_namespace` (the namespace-wide resolution the semantic and
scenario tests pin down); the contract-v2 path is `contribution.resolve_contribution` per policy
+ `composition.compose` per NodePort. They must agree on every port and family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import CidrRule, NodePortEntry, PodGroup, Scope, SourceSet
from contract.composition import Part, compose, everything, part_of, source_intervals
from contract.intervals import Intervals, intersect
from tests import builders as b
from webhook.contribution import resolve_contribution
from webhook.namespace_resolution import resolve_namespace
from webhook.semantics import compile_policy
from webhook.snapshot import StaticClusterView

CASES_PATH = Path(__file__).parents[2].parent / "shared" / "scenarios" / "cases.json"
Key = tuple[int, str, int]  # (nodePort, protocol, family)


def composed(view: StaticClusterView, namespace: str) -> dict[Key, Intervals]:
    parts: dict[Key, list[Part]] = {}
    for obj in view.policies_in(namespace):
        policy = compile_policy(obj)
        spec = obj.get("spec") or {}
        for entry in resolve_contribution(policy, spec.get("podSelector"), view).entries:
            for fam in entry.ip_families:
                family = 4 if fam == "IPv4" else 6
                parts.setdefault((entry.node_port, entry.protocol, family), []).append(part_of(entry, family))
    return {key: compose(ps, key[2]) for key, ps in parts.items()}


def reference(view: StaticClusterView, namespace: str) -> dict[Key, Intervals]:
    out: dict[Key, Intervals] = {}
    resolution = resolve_namespace(namespace, view)
    for name in resolution.policies:
        for v in resolution.verdicts_for(name):
            for fam in v.ip_families:
                family = 4 if fam == "IPv4" else 6
                out[(v.node_port, v.protocol, family)] = source_intervals(v.allow, family)
    return out


def assert_same(view: StaticClusterView, namespace: str) -> None:
    mine = composed(view, namespace)
    ref = reference(view, namespace)
    for key in sorted(set(mine) | set(ref)):
        whole = everything(key[2])
        assert mine.get(key, whole) == ref.get(key, whole), f"{key}: composed {mine.get(key)} vs {ref.get(key)}"


def _scenario_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return b.pod(spec["name"], spec.get("labels", {}), spec.get("containerPorts", []),
                 namespace=spec.get("namespace", "default"))


def test_every_shared_scenario_composes_to_the_namespace_verdict() -> None:
    cases = json.loads(CASES_PATH.read_text())
    assert len(cases) >= 36
    for case in cases:
        view = StaticClusterView(
            services=case["services"], pods=[_scenario_pod(p) for p in case["pods"]], policies=case["policies"]
        )
        namespaces = {o.get("metadata", {}).get("namespace", "default") for o in case["services"] + case["policies"]}
        for ns in sorted(namespaces | {"default"}):
            assert_same(view, ns)


# --- random namespaces --------------------------------------------------------------------

LABELS = st.dictionaries(st.sampled_from(["app", "tier", "v"]), st.sampled_from(["a", "b"]), max_size=3)
CIDRS = st.sampled_from(
    ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.7/32", "203.0.113.0/24", "2001:db8::/64", "0.0.0.0/0"]
)
PEER = st.one_of(
    st.builds(lambda c: {"ipBlock": {"cidr": c}}, CIDRS),
    st.just({"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}),
    st.just({"podSelector": {}}),
)
POLICY_PORT = st.sampled_from([{"port": 8080}, {"port": "http"}, {"port": 9000, "endPort": 9100}, {"protocol": "UDP"}])
RULE = st.fixed_dictionaries(
    {},
    optional={"from": st.lists(PEER, max_size=2), "ports": st.lists(POLICY_PORT, min_size=1, max_size=2)},
)
POLICY_SPEC = st.fixed_dictionaries(
    {"podSelector": st.builds(lambda m: {"matchLabels": m}, LABELS)},
    optional={"ingress": st.lists(RULE, max_size=2), "policyTypes": st.sampled_from([["Ingress"], ["Egress"]])},
)
CONTAINER_PORTS = st.sampled_from(
    [[{"name": "http", "containerPort": 8080}], [{"name": "http", "containerPort": 9050}], []]
)


@settings(max_examples=300, deadline=None)
@given(
    pods=st.lists(st.tuples(LABELS, CONTAINER_PORTS), min_size=0, max_size=5),
    specs=st.lists(POLICY_SPEC, max_size=4),
    target=st.sampled_from([8080, "http", 9050]),
    selector=LABELS,
)
def test_random_namespaces_compose_to_the_namespace_verdict(
    pods: list[tuple[dict[str, str], list[dict[str, Any]]]],
    specs: list[dict[str, Any]],
    target: int | str,
    selector: dict[str, str],
) -> None:
    services = [
        b.service("web", selector or {"app": "a"}, [
            {"port": 80, "targetPort": target, "nodePort": 30080},
            {"port": 53, "protocol": "UDP", "targetPort": 8080, "nodePort": 30053},
        ], ip_families=["IPv4", "IPv6"]),
    ]
    view = StaticClusterView(
        services=services,
        pods=[b.pod(f"p{i}", labels, ports) for i, (labels, ports) in enumerate(pods)],
        policies=[b.policy(f"np{i}", spec) for i, spec in enumerate(specs)],
    )
    assert_same(view, "default")


# --- composition rules, one by one ---------------------------------------------------------

V4 = 4
NET_A = source_intervals(SourceSet(False, (CidrRule("198.51.100.0/24"),)), V4)
NET_B = source_intervals(SourceSet(False, (CidrRule("203.0.113.0/24"),)), V4)


def _entry(scope: Scope, allow: SourceSet | None = None, groups: tuple[PodGroup, ...] = ()) -> NodePortEntry:
    return NodePortEntry(30080, "TCP", "web", 80, ("IPv4",), scope, allow or SourceSet.nobody(), groups)


def test_policies_selecting_every_pod_add_up() -> None:
    a = Part("all", NET_A)
    b_ = Part("all", NET_B)
    assert compose([a, b_], V4) == tuple(sorted(NET_A + NET_B))


def test_a_group_only_the_all_policy_selects_keeps_the_result_to_its_sources() -> None:
    # A selects every pod (allows A); B selects only g1 (allows B): g2 accepts only A.
    parts = [Part("all", NET_A), Part("some", groups=(("g1", NET_B), ("g2", None)))]
    assert compose(parts, V4) == NET_A


def test_groups_no_policy_selects_do_not_narrow() -> None:
    parts = [Part("some", groups=(("g1", NET_B), ("g2", None)))]
    assert compose(parts, V4) == NET_B


def test_each_group_must_accept() -> None:
    parts = [Part("some", groups=(("g1", NET_A), ("g2", None))), Part("some", groups=(("g1", None), ("g2", NET_B)))]
    assert compose(parts, V4) == ()


def test_a_stale_version_1_verdict_only_narrows() -> None:
    stale_wide = Part("verdict", tuple(sorted(NET_A + NET_B)))
    assert compose([Part("all", NET_A), stale_wide], V4) == NET_A
    assert compose([stale_wide], V4) == tuple(sorted(NET_A + NET_B))
    assert compose([Part("all", NET_A), Part("verdict", NET_B)], V4) == ()


def test_part_of_reads_entries() -> None:
    allow = SourceSet(False, (CidrRule("198.51.100.0/24"),))
    assert part_of(_entry("all", allow), V4) == Part("all", NET_A)
    group = PodGroup("0" * 32, allow)
    assert part_of(_entry("some", groups=(group, PodGroup("1" * 32, None))), V4).groups == (
        ("0" * 32, NET_A), ("1" * 32, None))


# --- upgrade from version 1 ----------------------------------------------------------------


def _v1_entries(view: StaticClusterView, namespace: str) -> dict[str, list[NodePortEntry]]:
    """What nodeport-guard 0.1 stored: the namespace-wide verdict in each involved policy."""
    resolution = resolve_namespace(namespace, view)
    return {name: [v.entry("verdict") for v in resolution.verdicts_for(name)] for name in resolution.policies}


def _v2_entries(view: StaticClusterView, namespace: str) -> dict[str, list[NodePortEntry]]:
    out = {}
    for obj in view.policies_in(namespace):
        spec = obj.get("spec") or {}
        out[obj["metadata"]["name"]] = list(
            resolve_contribution(compile_policy(obj), spec.get("podSelector"), view).entries
        )
    return out


def _allowed(entries: list[NodePortEntry]) -> dict[Key, Intervals]:
    parts: dict[Key, list[Part]] = {}
    for entry in entries:
        for fam in entry.ip_families:
            family = 4 if fam == "IPv4" else 6
            parts.setdefault((entry.node_port, entry.protocol, family), []).append(part_of(entry, family))
    return {key: compose(ps, key[2]) for key, ps in parts.items()}


@settings(max_examples=200, deadline=None)
@given(
    pods=st.lists(st.tuples(LABELS, CONTAINER_PORTS), min_size=1, max_size=4),
    specs=st.lists(POLICY_SPEC, min_size=1, max_size=4),
    migrated=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_no_nodeport_opens_at_any_moment_of_an_upgrade(
    pods: list[tuple[dict[str, str], list[dict[str, Any]]]], specs: list[dict[str, Any]], migrated: list[bool]
) -> None:
    """The reconciler rewrites version-1 annotations one policy at a time: whichever are rewritten
    so far, every NodePort allows no more than the verdict before (and after) the upgrade."""
    services = [b.service("web", {"app": "a"}, [{"port": 80, "targetPort": "http", "nodePort": 30080}])]
    view = StaticClusterView(
        services=services,
        pods=[b.pod(f"p{i}", {"app": "a", **labels}, ports) for i, (labels, ports) in enumerate(pods)],
        policies=[b.policy(f"np{i}", spec) for i, spec in enumerate(specs)],
    )
    old, new = _v1_entries(view, "default"), _v2_entries(view, "default")
    before = _allowed([e for es in old.values() for e in es])
    mixed = [e for i, name in enumerate(sorted(old)) for e in (new if migrated[i] else old)[name]]
    during = _allowed(mixed)
    after = _allowed([e for es in new.values() for e in es])
    for key, allowed in before.items():
        now = during.get(key, everything(key[2]))  # a NodePort no entry lists is not filtered
        assert intersect(now, allowed) == now, f"{key} opened mid-upgrade: {now} wider than {allowed}"
        assert after.get(key, everything(key[2])) == allowed, f"{key}: the upgrade changed the verdict"
