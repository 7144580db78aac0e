"""The enforcer's view of NetworkPolicies: a watched store and pure annotation verification.

Annotations are untrusted input: each is schema-checked and its Ed25519 signature verified
through the contract module, with public keys only (the enforcer never holds a signing key);
a policy whose annotation is missing, stale, forged or malformed contributes nothing and is
reported with its namespace/name and the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.annotation import ANNOTATION_PREFIX, SIGNATURE_KEY, Annotation, ContractError, read_signed
from contract.signing import VerifierKeys, signature_key_id
from kube.listwatch import EventType, Obj, ObjectSink


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    namespace: str
    name: str
    uid: str
    resource_version: str
    annotations: tuple[tuple[str, str], ...]  # only ours, sorted


@dataclass(frozen=True, slots=True)
class RejectedAnnotation:
    namespace: str
    name: str
    resource_version: str
    reason: str
    # The Ed25519 key id the signature names when it is not a trusted key (else ""): during a
    # rotation the enforcer re-reads its keys at once instead of waiting for the next refresh.
    unknown_key_id: str = ""


@dataclass(frozen=True, slots=True)
class Verified:
    annotations: tuple[Annotation, ...]
    rejected: tuple[RejectedAnnotation, ...]


def trim_policy(obj: Obj) -> StoredPolicy:
    meta: dict[str, Any] = obj.get("metadata") or {}
    ours = sorted((k, v) for k, v in (meta.get("annotations") or {}).items() if k.startswith(ANNOTATION_PREFIX))
    return StoredPolicy(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        annotations=tuple(ours),
    )


# The trusted public keys (current first, then the previous one during a rotation) and, only
# during the HMAC upgrade transition, the legacy HMAC keys.
SigningKeys = VerifierKeys


def verify_policy(p: StoredPolicy, keys: SigningKeys) -> Annotation | RejectedAnnotation | None:
    """Pure: the verified annotation of one policy, why it was refused, or None when it has none."""
    if not p.annotations:
        return None
    try:
        return read_signed(dict(p.annotations), p.namespace, p.name, p.uid, keys)
    except ContractError as exc:
        kid = signature_key_id(dict(p.annotations).get(SIGNATURE_KEY, ""))
        unknown = kid if kid is not None and kid not in keys.key_ids() else ""
        return RejectedAnnotation(p.namespace, p.name, p.resource_version, str(exc), unknown)


def verify_policies(policies: Iterable[StoredPolicy], keys: SigningKeys) -> Verified:
    """Pure: the annotations that verify, and why the others were refused."""
    good: list[Annotation] = []
    rejected: list[RejectedAnnotation] = []
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        result = verify_policy(p, keys)
        if isinstance(result, RejectedAnnotation):
            rejected.append(result)
        elif result is not None:
            good.append(result)
    return Verified(tuple(good), tuple(rejected))


_Fingerprint = tuple[str, tuple[tuple[str, str], ...], SigningKeys]
PolicyId = tuple[str, str]  # (namespace, name)


class VerificationCache:
    """Re-verifies only policies whose annotations, uid or the key changed since the last call.

    `verify` takes every policy (the full path: periodic resync, relist, key change);
    `verify_changes` takes only the policies changed since the last call (the fast path, O(changed)).
    Unchanged policies return the very same Annotation object, which the incremental planner
    recognises by identity.
    """

    def __init__(self) -> None:
        self._seen: dict[PolicyId, tuple[_Fingerprint, object]] = {}
        self._rejected_by: dict[PolicyId, RejectedAnnotation] = {}
        self._rejected: tuple[RejectedAnnotation, ...] = ()
        self._keys: SigningKeys | None = None

    @property
    def rejected(self) -> tuple[RejectedAnnotation, ...]:
        """Every currently refused annotation, sorted by namespace/name (the same tuple until one changes)."""
        return self._rejected

    def rejection(self, pid: PolicyId) -> RejectedAnnotation | None:
        """Why this policy's annotation is refused now, if it is."""
        return self._rejected_by.get(pid)

    def _check(self, p: StoredPolicy, keys: SigningKeys) -> object:
        pid = (p.namespace, p.name)
        fingerprint = (p.uid, p.annotations, keys)
        cached = self._seen.get(pid)
        result = cached[1] if cached is not None and cached[0] == fingerprint else verify_policy(p, keys)
        self._seen[pid] = (fingerprint, result)
        return result

    def _sort_rejected(self) -> None:
        self._rejected = tuple(sorted(self._rejected_by.values(), key=lambda r: (r.namespace, r.name)))

    def verify(
        self, policies: Iterable[StoredPolicy], keys: SigningKeys
    ) -> tuple[dict[PolicyId, Annotation], tuple[RejectedAnnotation, ...]]:
        """Every policy: the annotations that verify (by policy) and the refused ones (O(total))."""
        previous = self._seen
        self._seen = {}
        good: dict[PolicyId, Annotation] = {}
        rejected: dict[PolicyId, RejectedAnnotation] = {}
        for p in policies:
            pid = (p.namespace, p.name)
            cached = previous.get(pid)
            if cached is not None:
                self._seen[pid] = cached
            result = self._check(p, keys)
            if isinstance(result, Annotation):
                good[pid] = result
            elif isinstance(result, RejectedAnnotation):
                rejected[pid] = result
        self._keys = keys
        if rejected != self._rejected_by:
            self._rejected_by = rejected
            self._sort_rejected()
        return good, self._rejected

    def verify_changes(
        self, changes: Mapping[PolicyId, StoredPolicy | None], keys: SigningKeys
    ) -> dict[PolicyId, Annotation | None] | None:
        """Only the changed policies (None = deleted): each one's verified annotation, or None when
        it contributes nothing (deleted, no annotation, refused). Policies whose fingerprint did
        not change are left out. None when the keys changed since the last call: the caller must
        then verify everything with `verify`."""
        if self._keys is None or keys != self._keys:
            return None
        out: dict[PolicyId, Annotation | None] = {}
        rejected_changed = False
        for pid, p in changes.items():
            before = self._seen.get(pid)
            if p is None:
                self._seen.pop(pid, None)
                result: object = None
            else:
                result = self._check(p, keys)
                if before is not None and before[1] is result:
                    continue
            if isinstance(result, RejectedAnnotation):
                self._rejected_by[pid] = result
                rejected_changed = True
            elif self._rejected_by.pop(pid, None) is not None:
                rejected_changed = True
            out[pid] = result if isinstance(result, Annotation) else None
        if rejected_changed:
            self._sort_rejected()
        return out


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the store since the last `take_changes`: per policy its current value
    (None = deleted), and whether a relist happened (the caller then recomputes everything)."""

    policies: dict[PolicyId, StoredPolicy | None]
    relisted: bool
    # The watch resourceVersion up to which every event is in `policies` (or was in an earlier
    # Changes): once these are programmed, so is every policy version up to it (node status).
    resource_version: str = ""


def _same(a: StoredPolicy | None, b: StoredPolicy | None) -> bool:
    """Equal for the enforcer: only our annotations and the uid (which they are bound to) matter."""
    if a is None or b is None:
        return a is b
    return a.annotations == b.annotations and a.uid == b.uid


class PolicyStore(ObjectSink[StoredPolicy]):
    """Thread-safe store of trimmed policies that records which ones changed since the last sync.

    `changed` is set on every real change (annotations or uid; a spec or label change the
    webhook has not re-resolved yet programs nothing). A relist is diffed against what is known,
    so only the policies that really differ are reported, and it is flagged as a relist.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[PolicyId, StoredPolicy] = {}
        self._dirty: set[PolicyId] = set()
        self._relisted = False
        self._resource_version = ""
        self.changed = threading.Event()
        self.synced = threading.Event()

    def replace(self, kind: str, objects: list[StoredPolicy], resource_version: str) -> None:
        fresh = {(p.namespace, p.name): p for p in objects}
        with self._lock:
            old = self._policies
            dirty = {k for k in old.keys() - fresh.keys()}
            dirty.update(k for k, p in fresh.items() if not _same(old.get(k), p))
            self._policies = fresh
            self._dirty |= dirty
            self._relisted = True
            self._resource_version = resource_version
        self.synced.set()
        self.changed.set()

    def apply(self, kind: str, event: EventType, p: StoredPolicy) -> None:
        key = (p.namespace, p.name)
        with self._lock:
            old = self._policies.get(key)
            if p.resource_version:  # watch events arrive in resourceVersion order
                self._resource_version = p.resource_version
            if event == "DELETED":
                if self._policies.pop(key, None) is None:
                    return
            else:
                self._policies[key] = p
                if _same(old, p):
                    return  # a spec or label change the webhook has not re-resolved yet: nothing to program
            self._dirty.add(key)
        self.changed.set()

    def take_changes(self) -> Changes:
        """The policies changed since the last call (O(changed)), and forget them."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            relisted, self._relisted = self._relisted, False
            return Changes({k: self._policies.get(k) for k in dirty}, relisted, self._resource_version)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion seen (list or event)."""
        with self._lock:
            return self._resource_version

    def idle_resource_version(self) -> str | None:
        """The last resourceVersion seen when no change waits to be taken (events that changed
        nothing to program still move it), else None."""
        with self._lock:
            return None if self._dirty or self._relisted else self._resource_version

    def snapshot(self) -> list[StoredPolicy]:
        """Every stored policy (O(total): the full path only)."""
        with self._lock:
            return list(self._policies.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._policies)
