"""Incremental planning for the sync loop: only policies that changed are re-planned (no I/O).

With 10,000 protected policies, re-verifying and re-planning everything on each change costs
seconds; one policy added must cost milliseconds whatever the total. The planner keeps each
policy's contribution and each port's result; `apply()` takes only the changed policies,
recomputes only the ports they name and returns those ports' before/after (what the
dataplane's fast path writes). The whole DesiredState is built only when asked (the full path),
with the same ProtectedPort objects for unchanged ports (the dataplane's diff is cheap on
identity). The result always equals `plan_desired_state` over the same annotations, after any
sequence of changes (a property test checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from contract.annotation import Annotation
from enforcer.plan import (
    Contribution,
    DesiredState,
    PlanResult,
    PortKey,
    ProtectedPort,
    RejectedEntry,
    check_nodeport_range,
    plan_contribution,
    protected_port,
)

PolicyId = tuple[str, str]  # (namespace, name)


def _order(key: PortKey) -> tuple[int, str, int]:
    return (key.family, key.protocol, key.port)


PortChange = tuple[ProtectedPort | None, ProtectedPort | None]  # (before, after); None = not protected


class IncrementalPlanner:
    """Holds the last plan. `apply()` takes only the changed policies (O(changed)); `plan()` takes
    every current annotation (the full path: resync, relist, key change) and re-plans what differs."""

    def __init__(self, nodeport_range: tuple[int, int]) -> None:
        check_nodeport_range(nodeport_range)
        self._range = nodeport_range
        self._contributions: dict[PolicyId, tuple[Annotation, Contribution]] = {}
        self._holders: dict[PortKey, set[PolicyId]] = {}
        # Keyed by (family, protocol, port): tuples hash and sort in C, PortKeys in Python.
        self._ports: dict[tuple[int, str, int], ProtectedPort] = {}
        self._order: list[tuple[int, str, int]] = []  # sorted keys of self._ports
        self._state: DesiredState | None = DesiredState()  # None: rebuild from _order on demand
        self._rejected_by: dict[PolicyId, tuple[RejectedEntry, ...]] = {}
        self._rejected: tuple[RejectedEntry, ...] = ()

    @property
    def port_count(self) -> int:
        return len(self._ports)

    @property
    def rejected(self) -> tuple[RejectedEntry, ...]:
        """Entries refused by the plan, sorted (the same tuple until one changes)."""
        return self._rejected

    def state(self) -> DesiredState:
        """The whole desired state; built (O(ports)) only when asked after a change."""
        if self._state is None:
            self._state = DesiredState.trusted(tuple(self._ports[k] for k in self._order))
        return self._state

    def plan(self, annotations: Mapping[PolicyId, Annotation]) -> PlanResult:
        """Every current annotation: re-plans the policies that differ from the last plan (O(total))."""
        changes: dict[PolicyId, Annotation | None] = dict.fromkeys(self._contributions.keys() - annotations.keys())
        changes.update(annotations)
        self.apply(changes)
        return PlanResult(state=self.state(), rejected=self._rejected)

    def apply(self, changes: Mapping[PolicyId, Annotation | None]) -> dict[PortKey, PortChange]:
        """Only the changed policies (None = contributes nothing now): the ports whose protection
        changed, with their before and after. Cost: the changed policies and the ports they name."""
        touched: set[PortKey] = set()
        rejected_changed = False
        for pid, annotation in changes.items():
            previous = self._contributions.get(pid)
            if previous is not None and annotation is not None and (
                previous[0] is annotation or previous[0] == annotation
            ):
                continue
            if previous is not None:
                touched |= self._forget(pid)
                if self._rejected_by.pop(pid, None) is not None:
                    rejected_changed = True
            if annotation is None:
                continue
            contribution = plan_contribution(annotation, self._range)
            self._contributions[pid] = (annotation, contribution)
            for key in contribution.allowed:
                self._holders.setdefault(key, set()).add(pid)
            touched |= contribution.allowed.keys()
            if contribution.rejected:
                self._rejected_by[pid] = contribution.rejected
                rejected_changed = True
        delta: dict[PortKey, PortChange] = {}
        for key in touched:
            before, after = self._replan(key)
            if before is not after and before != after:
                delta[key] = (before, after)
        if delta:
            self._state = None
        if rejected_changed:
            self._rejected = tuple(
                sorted((r for entries in self._rejected_by.values() for r in entries), key=_rejected_order)
            )
        return delta

    def _forget(self, pid: PolicyId) -> set[PortKey]:
        _, contribution = self._contributions.pop(pid)
        for key in contribution.allowed:
            holders = self._holders[key]
            holders.discard(pid)
            if not holders:
                del self._holders[key]
        return set(contribution.allowed)

    def _replan(self, key: PortKey) -> PortChange:
        holders = self._holders.get(key, set())
        port = protected_port(key, (self._contributions[pid][1] for pid in sorted(holders))) if holders else None
        order = _order(key)
        before = self._ports.get(order)
        if port is None:
            if before is not None:
                del self._ports[order]
                del self._order[bisect.bisect_left(self._order, order)]
            return before, None
        if before is not None and before == port:
            return before, before  # unchanged: keep the object the dataplane's memo knows
        if before is None:
            bisect.insort(self._order, order)
        self._ports[order] = port
        return before, port


def _rejected_order(r: RejectedEntry) -> tuple[str, str, int, str]:
    return (r.namespace, r.name, r.node_port, r.protocol)
