"""The incremental planner always equals the from-scratch plan, whatever sequence of changes arrives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotation import (
    Annotation,
    CidrRule,
    Mode,
    NodePortEntry,
    NodePortVerdict,
    PodGroup,
    PolicyRef,
    SourceSet,
)
from enforcer.delta import apply_to, fast_set_changes
from enforcer.diff import render_members
from enforcer.incremental import IncrementalPlanner, PolicyId, PortChange
from enforcer.plan import DesiredState, PortKey, ProtectedPort, plan_desired_state

RANGE = (30000, 30010)
V4 = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.128/26", "203.0.113.0/24", "0.0.0.0/0"]
V6 = ["2001:db8::/32", "2001:db8:1::/48", "::/0"]

rules = st.builds(
    lambda cidr, drop: CidrRule(cidr, (("198.51.100.7/32",) if drop and cidr.startswith("198.51.100.0/24") else ())),
    st.sampled_from(V4 + V6),
    st.booleans(),
)
source_sets = st.one_of(
    st.just(SourceSet.everyone()),
    st.lists(rules, max_size=3, unique=True).map(lambda r: SourceSet(False, tuple(r))),
)
verdicts = st.builds(
    NodePortVerdict,
    node_port=st.sampled_from([22, 29999, 30000, 30001, 30005, 30010, 30011]),
    protocol=st.sampled_from(["TCP", "UDP", "SCTP"]),
    service=st.just("svc"),
    service_port=st.just(80),
    ip_families=st.sampled_from([("IPv4",), ("IPv6",), ("IPv4", "IPv6")]),
    allow=source_sets,
)
policy_ids = st.sampled_from([("a", "p1"), ("a", "p2"), ("b", "p1"), ("b", "p3")])


GROUPS = ["0" * 32, "1" * 32, "2" * 32]
# A version-2 entry of scope "some": each endpoint group selected (with sources) or not (None).
some_groups = st.lists(st.one_of(st.none(), source_sets), min_size=1, max_size=3).map(
    lambda allows: tuple(PodGroup(GROUPS[i], a) for i, a in enumerate(allows))
)


def _entry(v: NodePortVerdict, version: int, groups: tuple[PodGroup, ...] | None) -> NodePortEntry:
    if version == 1:
        return v.entry("verdict")
    if groups is None:
        return v.entry("all")
    return NodePortEntry(v.node_port, v.protocol, v.service, v.service_port, v.ip_families, "some", groups=groups)


Ports = list[tuple[NodePortVerdict, tuple[PodGroup, ...] | None]]


def _annotation(pid: PolicyId, version: int, ports: Ports) -> Annotation:
    unique = {(v.node_port, v.protocol): _entry(v, version, g) for v, g in ports}
    # Version 3 is an auditing policy (mode "audit"): modes must compose the same either way.
    mode: Mode = "audit" if version == 3 else "enforce"
    return Annotation(PolicyRef(pid[0], pid[1], "uid"), tuple(unique.values()), version=version, mode=mode)


# Version-1, version-2 (enforcing) and version-3 (auditing) annotations mixed, as during an upgrade.
versioned_ports: st.SearchStrategy[tuple[int, Ports]] = st.tuples(
    st.sampled_from([1, 2, 3]), st.lists(st.tuples(verdicts, st.one_of(st.none(), some_groups)), max_size=4)
)
snapshots = st.dictionaries(policy_ids, versioned_ports, max_size=4).map(
    lambda d: {pid: _annotation(pid, vp[0], vp[1]) for pid, vp in d.items()}
)


@settings(max_examples=300, deadline=None)
@given(sequence=st.lists(snapshots, min_size=1, max_size=6))
def test_incremental_plan_equals_full_plan_after_every_change(sequence: list[dict[PolicyId, Annotation]]) -> None:
    planner = IncrementalPlanner(RANGE)
    for snapshot in sequence:
        incremental = planner.plan(snapshot)
        full = plan_desired_state(snapshot.values(), RANGE)
        assert incremental.state == full.state
        assert incremental.rejected == full.rejected


def test_unchanged_ports_keep_their_objects() -> None:
    """The dataplane's diff is cheap on identity: a new policy must not rebuild the others' ports."""
    planner = IncrementalPlanner(RANGE)
    first = {
        ("a", f"p{i}"): _annotation(
            ("a", f"p{i}"), 2, [(NodePortVerdict(30000 + i, "TCP", "s", 80, ("IPv4",), SourceSet.nobody()), None)]
        )
        for i in range(5)
    }
    before = planner.plan(first).state.ports
    second = {
        **first,
        ("a", "new"): _annotation(
            ("a", "new"), 2, [(NodePortVerdict(30009, "TCP", "s", 80, ("IPv4",), SourceSet.nobody()), None)]
        ),
    }
    after = planner.plan(second).state.ports
    assert len(after) == 6
    assert all(any(a is b for a in after) for b in before)


def _changes(
    before: dict[PolicyId, Annotation], after: dict[PolicyId, Annotation]
) -> dict[PolicyId, Annotation | None]:
    """Only what differs, as the store and the verification cache report it (None = gone)."""
    out: dict[PolicyId, Annotation | None] = dict.fromkeys(before.keys() - after.keys())
    out.update({pid: a for pid, a in after.items() if before.get(pid) != a})
    return out


@settings(max_examples=300, deadline=None)
@given(sequence=st.lists(snapshots, min_size=1, max_size=6))
def test_applying_only_the_changes_equals_the_full_plan(sequence: list[dict[PolicyId, Annotation]]) -> None:
    """`apply` sees only the changed policies; its delta takes the previous state to the new one,
    and the set members it implies take the previous sets to the new ones (or a full sync is asked)."""
    planner = IncrementalPlanner(RANGE)
    previous: dict[PolicyId, Annotation] = {}
    state = planner.state()
    for snapshot in sequence:
        delta = planner.apply(_changes(previous, snapshot))
        full = plan_desired_state(snapshot.values(), RANGE)
        assert planner.state() == full.state and planner.rejected == full.rejected
        ports = state.as_dict()
        for key, (before, after) in delta.items():
            assert (before.allowed if before else None) == ports.get(key)
            assert after is not None or before is not None
            if after is None:
                del ports[key]
            else:
                ports[key] = after.allowed
        assert ports == full.state.as_dict()
        _check_members(state, full.state, delta)
        previous, state = snapshot, full.state


def _check_members(before: DesiredState, after: DesiredState, delta: dict[PortKey, PortChange]) -> None:
    last = {n: set(m) for n, m in render_members(before).items()}
    wanted = {n: set(m) for n, m in render_members(after).items()}
    set_changes = fast_set_changes(last, delta)
    if set_changes is None:
        # Only when a set must be created or a family's sets and skeleton removed.
        assert set(wanted) != set(last)
        return
    assert set(wanted) == set(last)
    apply_to(last, set_changes)
    assert last == wanted


def test_fast_set_changes_refuses_what_disagrees_with_our_record() -> None:
    port = ProtectedPort(PortKey(4, "TCP", 30001), ())
    last = {n: set(m) for n, m in render_members([port]).items()}
    assert fast_set_changes(last, {port.key: (port, port)}) == ()  # nothing to write
    added = ProtectedPort(PortKey(4, "TCP", 30002), ())
    changes = fast_set_changes(last, {added.key: (None, added)})
    assert changes is not None and [(c.name, c.adds) for c in changes] == [("npg-4-tcp", ("30002",))]
    last["npg-4-tcp"].add("30002")  # someone (or a lost reply) already added it: read back instead
    assert fast_set_changes(last, {added.key: (None, added)}) is None
