"""Incremental planning for the sync loop: only policies that changed are re-planned (no I/O).

With 10,000 protected policies, re-verifying and re-planning everything on each change costs
seconds; one policy added must cost milliseconds. The planner keeps each policy's contribution
and each port's result, recomputes only the ports a changed policy touches, and hands the
dataplane the same ProtectedPort objects for unchanged ports (its diff is cheap on identity).
The result always equals `plan_desired_state` over the same annotations (a property test
checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

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
from webhook.contract import Annotation

PolicyId = tuple[str, str]  # (namespace, name)


def _order(key: PortKey) -> tuple[int, str, int]:
    return (key.family, key.protocol, key.port)


class IncrementalPlanner:
    """Holds the last plan; `plan()` takes every current annotation and re-plans what changed."""

    def __init__(self, nodeport_range: tuple[int, int]) -> None:
        check_nodeport_range(nodeport_range)
        self._range = nodeport_range
        self._contributions: dict[PolicyId, tuple[Annotation, Contribution]] = {}
        self._holders: dict[PortKey, set[PolicyId]] = {}
        # Keyed by (family, protocol, port): tuples hash and sort in C, PortKeys in Python.
        self._ports: dict[tuple[int, str, int], ProtectedPort] = {}
        self._order: list[tuple[int, str, int]] = []  # sorted keys of self._ports
        self._state = DesiredState()
        self._rejected: tuple[RejectedEntry, ...] = ()

    def plan(self, annotations: Mapping[PolicyId, Annotation]) -> PlanResult:
        touched: set[PortKey] = set()
        rejected_changed = False
        for pid in self._contributions.keys() - annotations.keys():
            touched |= self._forget(pid)
            rejected_changed = True
        for pid, annotation in annotations.items():
            previous = self._contributions.get(pid)
            if previous is not None and (previous[0] is annotation or previous[0] == annotation):
                continue
            if previous is not None:
                touched |= self._forget(pid)
            contribution = plan_contribution(annotation, self._range)
            self._contributions[pid] = (annotation, contribution)
            for key in contribution.allowed:
                self._holders.setdefault(key, set()).add(pid)
            touched |= contribution.allowed.keys()
            rejected_changed = rejected_changed or bool(contribution.rejected) or previous is not None
        if touched:
            for key in touched:
                self._replan(key)
            self._state = DesiredState.trusted(tuple(self._ports[k] for k in self._order))
        if rejected_changed:
            self._rejected = tuple(
                sorted(
                    (r for _, c in self._contributions.values() for r in c.rejected),
                    key=lambda r: (r.namespace, r.name, r.node_port, r.protocol),
                )
            )
        return PlanResult(state=self._state, rejected=self._rejected)

    def _forget(self, pid: PolicyId) -> set[PortKey]:
        _, contribution = self._contributions.pop(pid)
        for key in contribution.allowed:
            holders = self._holders[key]
            holders.discard(pid)
            if not holders:
                del self._holders[key]
        return set(contribution.allowed)

    def _replan(self, key: PortKey) -> None:
        holders = self._holders.get(key, set())
        port = protected_port(key, (self._contributions[pid][1] for pid in sorted(holders))) if holders else None
        order = _order(key)
        if port is None:
            if self._ports.pop(order, None) is not None:
                del self._order[bisect.bisect_left(self._order, order)]
            return
        if order not in self._ports:
            bisect.insort(self._order, order)
        self._ports[order] = port
