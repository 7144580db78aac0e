"""The enforcer's view of NetworkPolicies: a watched store and pure annotation verification.

Annotations are untrusted input: each is schema-checked and its Ed25519 signature verified
through the contract module, with public keys only (the enforcer never holds a signing key);
a policy whose annotation is missing, stale, forged or malformed contributes nothing and is
reported with its namespace/name and the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webhook.contract import ANNOTATION_PREFIX, SIGNATURE_KEY, Annotation, ContractError, read_signed
from webhook.listwatch import EventType, Obj, ObjectSink
from webhook.signing import VerifierKeys, signature_key_id


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


class VerificationCache:
    """Re-verifies only policies whose annotations, uid or the key changed since the last call.

    Unchanged policies return the very same Annotation object, which the incremental planner
    recognises by identity.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[_Fingerprint, object]] = {}

    def verify(
        self, policies: Iterable[StoredPolicy], keys: SigningKeys
    ) -> tuple[dict[tuple[str, str], Annotation], tuple[RejectedAnnotation, ...]]:
        fresh: dict[tuple[str, str], tuple[_Fingerprint, object]] = {}
        good: dict[tuple[str, str], Annotation] = {}
        rejected: list[RejectedAnnotation] = []
        for p in policies:
            pid = (p.namespace, p.name)
            fingerprint = (p.uid, p.annotations, keys)
            cached = self._seen.get(pid)
            result = cached[1] if cached is not None and cached[0] == fingerprint else verify_policy(p, keys)
            fresh[pid] = (fingerprint, result)
            if isinstance(result, Annotation):
                good[pid] = result
            elif isinstance(result, RejectedAnnotation):
                rejected.append(result)
        self._seen = fresh
        rejected.sort(key=lambda r: (r.namespace, r.name))
        return good, tuple(rejected)


class PolicyStore(ObjectSink[StoredPolicy]):
    """Thread-safe store of trimmed policies; `changed` is set on every real change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[tuple[str, str], StoredPolicy] = {}
        self.changed = threading.Event()
        self.synced = threading.Event()

    def replace(self, kind: str, objects: list[StoredPolicy], resource_version: str) -> None:
        fresh = {(p.namespace, p.name): p for p in objects}
        with self._lock:
            self._policies = fresh
        self.synced.set()
        self.changed.set()

    def apply(self, kind: str, event: EventType, p: StoredPolicy) -> None:
        key = (p.namespace, p.name)
        with self._lock:
            old = self._policies.get(key)
            if event == "DELETED":
                self._policies.pop(key, None)
            else:
                self._policies[key] = p
            if event != "DELETED" and old is not None and old.annotations == p.annotations and old.uid == p.uid:
                return  # a spec or label change the webhook has not re-resolved yet: nothing to program
        self.changed.set()

    def snapshot(self) -> list[StoredPolicy]:
        with self._lock:
            return list(self._policies.values())
