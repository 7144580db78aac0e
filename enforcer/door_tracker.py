"""The enforcer's doors: each policy's verified doors pair, re-verified only when it changes, and the plan (pure).

Doors travel in their own signed pair (contract/doors.py); a refused doors pair takes only its doors
with it (the policy's NodePorts still count). The plan is recomputed when a doors pair or the node's
addresses change, never on a NodePort-only change, so the NodePort fast path is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

from contract.annotation import ContractError
from contract.doors import DOORS_KEY, DOORS_SIGNATURE_KEY, DoorsAnnotation, read_signed_doors
from enforcer.doors import DoorPlan, plan_doors
from enforcer.policies import PolicyId, SigningKeys, StoredPolicy

logger = logging.getLogger(__name__)

_Fingerprint = tuple[str, tuple[tuple[str, str], ...], SigningKeys]


def verify_doors(p: StoredPolicy, keys: SigningKeys) -> DoorsAnnotation | str | None:
    """The verified doors value of one policy, why it is refused (text), or None when it has none."""
    try:
        return read_signed_doors(dict(p.annotations), p.namespace, p.name, p.uid, keys)
    except ContractError as exc:
        return str(exc)


class DoorTracker:
    """Verified doors per policy and the door plan built from them (recomputed only when needed)."""

    def __init__(self) -> None:
        self._seen: dict[PolicyId, tuple[_Fingerprint, DoorsAnnotation | str | None]] = {}
        self._addresses: frozenset[str] = frozenset()
        self._plan = DoorPlan((), ())
        self._dirty = False

    @property
    def plan(self) -> DoorPlan:
        return self._plan

    @property
    def refused(self) -> tuple[str, ...]:
        """`namespace/name: reason` of every doors pair refused now, and of every refused door."""
        pairs = [f"{ns}/{name}: doors refused: {r}" for (ns, name), (_, r) in sorted(self._seen.items())
                 if isinstance(r, str)]
        return (*pairs, *(f"{r.namespace}/{r.name}: {r.reason}" for r in self._plan.rejected))

    def _check(self, pid: PolicyId, p: StoredPolicy, keys: SigningKeys) -> None:
        door_keys = tuple(kv for kv in p.annotations if kv[0] in (DOORS_KEY, DOORS_SIGNATURE_KEY))
        fingerprint = (p.uid, door_keys, keys)
        seen = self._seen.get(pid)
        if seen is not None and seen[0] == fingerprint:
            return
        result = verify_doors(p, keys) if door_keys else None
        if isinstance(result, str):
            logger.warning("doors annotation rejected; policy contributes no door",
                           extra={"namespace": p.namespace, "policy": p.name, "reason": result})
        if result is None and (seen is None or seen[1] is None):
            self._seen[pid] = (fingerprint, None)  # no doors before or now: nothing to re-plan
            return
        self._seen[pid] = (fingerprint, result)
        self._dirty = True

    def update(self, changes: Mapping[PolicyId, StoredPolicy | None], keys: SigningKeys) -> None:
        """The fast path: only the changed policies (None = deleted)."""
        for pid, p in changes.items():
            if p is None:
                if self._seen.pop(pid, (None, None))[1] is not None:
                    self._dirty = True
            else:
                self._check(pid, p, keys)

    def update_all(self, policies: Iterable[StoredPolicy], keys: SigningKeys) -> None:
        """The full path: every policy (unchanged ones are cache hits)."""
        current = {(p.namespace, p.name): p for p in policies}
        for pid in [pid for pid in self._seen if pid not in current]:
            if self._seen.pop(pid)[1] is not None:
                self._dirty = True
        for pid, p in current.items():
            self._check(pid, p, keys)

    def replan(self, node_addresses: Collection[str]) -> bool:
        """Rebuild the plan when a doors pair or the node's addresses changed; True when it changed."""
        addresses = frozenset(node_addresses)
        if not self._dirty and addresses == self._addresses:
            return False
        self._dirty, self._addresses = False, addresses
        verified = [r for _, r in (self._seen[pid] for pid in sorted(self._seen)) if isinstance(r, DoorsAnnotation)]
        plan = plan_doors(verified, addresses)
        changed = plan.doors != self._plan.doors
        self._plan = plan
        return changed
