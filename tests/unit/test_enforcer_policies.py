"""Enforcer-side verification: untrusted annotations, the verification cache and key rotation (pure)."""

from __future__ import annotations

from enforcer.policies import RejectedAnnotation, StoredPolicy, VerificationCache, verify_policy
from webhook.contract import Annotation, NodePortVerdict, PolicyRef, SourceSet, render_annotations

OLD, NEW, OTHER = b"old-key-" * 4, b"new-key-" * 4, b"forged--" * 4


def _stored(key: bytes, name: str = "p", uid: str = "u1") -> StoredPolicy:
    annotation = Annotation(
        PolicyRef("ns", name, uid), (NodePortVerdict(30080, "TCP", "web", 80, ("IPv4",), SourceSet.nobody()).entry(),)
    )
    return StoredPolicy("ns", name, uid, "1", tuple(sorted(render_annotations(annotation, key).items())))


def test_previous_key_stays_accepted_during_rotation() -> None:
    assert isinstance(verify_policy(_stored(OLD), (NEW, OLD)), Annotation)
    assert isinstance(verify_policy(_stored(NEW), (NEW, OLD)), Annotation)
    assert isinstance(verify_policy(_stored(OLD), (NEW,)), RejectedAnnotation)
    rejected = verify_policy(_stored(OTHER), (NEW, OLD))
    assert isinstance(rejected, RejectedAnnotation) and "signature does not match" in rejected.reason


def test_stale_uid_copy_is_rejected() -> None:
    copied = _stored(NEW, uid="u1")
    moved = StoredPolicy(copied.namespace, copied.name, "u2", "2", copied.annotations)
    result = verify_policy(moved, (NEW,))
    assert isinstance(result, RejectedAnnotation) and "stale copy" in result.reason


def test_cache_returns_the_same_object_until_something_changes() -> None:
    cache = VerificationCache()
    policies = [_stored(NEW, "a"), _stored(NEW, "b")]
    first, _ = cache.verify(policies, (NEW,))
    second, _ = cache.verify(policies, (NEW,))
    assert all(first[k] is second[k] for k in first)
    # A key rotation re-verifies: an annotation signed with the dropped key is refused.
    third, rejected = cache.verify(policies, (OTHER,))
    assert third == {} and len(rejected) == 2
    # A removed policy disappears.
    fourth, _ = cache.verify(policies[:1], (NEW,))
    assert list(fourth) == [("ns", "a")]
