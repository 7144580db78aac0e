"""The dataplane's fast path: set member changes of the changed ports only (pure).

After an event the incremental planner knows which ports changed and their before/after. The
members of different ports never overlap (each member names its own protocol and port), so the
sets' difference is the union of the per-port differences, computed in O(changed ports) without
rendering or comparing the other ports. When that cannot express the change (a set must be
created, a family loses its last port and with it the skeleton, or our record of the sets
disagrees with it), `fast_set_changes` answers None and the caller does a full sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from contract.annotation import PROTOCOLS
from enforcer import diff
from enforcer.incremental import PortChange
from enforcer.plan import FAMILIES, Network, PortKey, ProtectedPort


@dataclass(frozen=True, slots=True)
class MemberDelta:
    """Per set: members to add and to delete."""

    adds: dict[str, set[str]]
    removes: dict[str, set[str]]


def _members(port: ProtectedPort | None, audit_all: bool) -> dict[str, frozenset[str]]:
    if port is None:
        return {}
    return {name: members for name, members in diff.render_members([port], None, audit_all).items() if members}


def member_delta(changes: Mapping[PortKey, PortChange], audit_all: bool = False) -> MemberDelta:
    """The set members to add and delete so the sets go from every port's before to its after."""
    adds: dict[str, set[str]] = {}
    removes: dict[str, set[str]] = {}
    for before, after in changes.values():
        old, new = _members(before, audit_all), _members(after, audit_all)
        for name in old.keys() | new.keys():
            have, want = old.get(name, frozenset()), new.get(name, frozenset())
            if want - have:
                adds.setdefault(name, set()).update(want - have)
            if have - want:
                removes.setdefault(name, set()).update(have - want)
    return MemberDelta(adds, removes)


def _port_sets(family: int) -> tuple[str, ...]:
    return tuple(diff.port_set_name(family, p) for p in PROTOCOLS) if family in FAMILIES else ()


def fast_set_changes(
    last: Mapping[str, Set[str]], changes: Mapping[PortKey, PortChange], audit_all: bool = False
) -> tuple[diff.SetChange, ...] | None:
    """The "update" SetChanges for `changes` on top of the sets we last wrote (`last`), or None
    when only a full sync can do it."""
    delta = member_delta(changes, audit_all)
    out: list[diff.SetChange] = []
    for name in sorted(delta.adds.keys() | delta.removes.keys()):
        have = last.get(name)
        adds = delta.adds.get(name, set())
        removes = delta.removes.get(name, set())
        if have is None:
            return None  # the set does not exist: creating it (and maybe the skeleton) is the full path's job
        if not removes <= have or adds & have:
            return None  # our record disagrees with the change: let the full path read back and repair
        out.append(diff.SetChange(name, "update", tuple(sorted(adds)), tuple(sorted(removes)), len(adds), len(removes)))
    for family in FAMILIES:
        names = _port_sets(family)
        if not any(n in delta.removes for n in names):
            continue
        left = sum(len(last.get(n, ())) + len(delta.adds.get(n, ())) - len(delta.removes.get(n, ())) for n in names)
        if left == 0:
            return None  # the family's last port goes: its skeleton and sets are removed by the full path
    return tuple(out)


def newly_restricted(
    changes: Mapping[PortKey, PortChange], audit_all: bool = False
) -> dict[PortKey, tuple[Network, ...]]:
    """Ports that now drop flows they did not (newly protected, fewer allowed prefixes, or out of
    audit mode), with their allow-lists now (for conntrack). Audited ports drop nothing."""
    out: dict[PortKey, tuple[Network, ...]] = {}
    for key, (before, after) in changes.items():
        if after is None or audit_all or after.mode == "audit":
            continue
        if before is None or before.mode == "audit" or not set(before.allowed) <= set(after.allowed):
            out[key] = after.allowed
    return out


def apply_to(last: dict[str, set[str]], set_changes: tuple[diff.SetChange, ...]) -> None:
    """Record in `last` what a successful fast path wrote."""
    for c in set_changes:
        members = last[c.name]
        members.difference_update(c.removes)
        members.update(c.adds)
