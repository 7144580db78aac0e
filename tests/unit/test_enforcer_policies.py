"""Enforcer-side verification: untrusted annotations, the verification cache, key rotation, legacy HMAC (pure)."""

from __future__ import annotations

import base64

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    NodePortVerdict,
    PolicyRef,
    SourceSet,
    encode,
    render_annotations,
)
from contract.signing import Signer, VerifierKeys, legacy_hmac_signature
from enforcer.policies import RejectedAnnotation, StoredPolicy, VerificationCache, verify_policy

OLD, NEW, OTHER = (Signer.from_seed(bytes([n]) * 32) for n in (1, 2, 3))
LEGACY_HMAC = b"legacy-hmac-key-" * 2


def _annotation(name: str = "p", uid: str = "u1", version: int = 2) -> Annotation:
    verdict = NodePortVerdict(30080, "TCP", "web", 80, ("IPv4",), SourceSet.nobody())
    # Version 1 (what the HMAC-signing webhook wrote) held the namespace-wide verdict.
    entry = verdict.entry("verdict") if version == 1 else verdict.entry()
    return Annotation(PolicyRef("ns", name, uid), (entry,), version=version)


def _stored(key: Signer, name: str = "p", uid: str = "u1") -> StoredPolicy:
    annotations = render_annotations(_annotation(name, uid), key)
    return StoredPolicy("ns", name, uid, "1", tuple(sorted(annotations.items())))


def _stored_legacy(hmac_key: bytes, name: str = "p", uid: str = "u1") -> StoredPolicy:
    """An annotation as the HMAC-signing webhook (before Ed25519) wrote it."""
    value = encode(_annotation(name, uid, version=1))
    signature = legacy_hmac_signature(hmac_key, value.encode())
    return StoredPolicy("ns", name, uid, "1", tuple(sorted({NODEPORTS_KEY: value, SIGNATURE_KEY: signature}.items())))


def _keys(*signers: Signer, legacy: tuple[bytes, ...] = ()) -> VerifierKeys:
    return VerifierKeys(tuple(s.public for s in signers), legacy)


def _reason(result: object) -> str:
    assert isinstance(result, RejectedAnnotation), result
    return result.reason


def test_previous_key_stays_accepted_during_rotation() -> None:
    assert isinstance(verify_policy(_stored(OLD), _keys(NEW, OLD)), Annotation)
    assert isinstance(verify_policy(_stored(NEW), _keys(NEW, OLD)), Annotation)
    assert "not one of the trusted keys" in _reason(verify_policy(_stored(OLD), _keys(NEW)))
    reason = _reason(verify_policy(_stored(OTHER), _keys(NEW, OLD)))
    assert reason.startswith(f"{SIGNATURE_KEY}: signature does not match")
    assert OTHER.public.key_id in reason and NEW.public.key_id in reason


def test_the_signature_format_is_ed25519_key_id_and_base64() -> None:
    signature = dict(_stored(NEW).annotations)[SIGNATURE_KEY]
    scheme, kid, encoded = signature.split(":")
    assert (scheme, kid, len(kid), len(encoded)) == ("ed25519", NEW.public.key_id, 16, 88)
    # Deterministic (RFC 8032): re-signing the same value gives the same string, so the reconciler never churns.
    assert dict(_stored(NEW).annotations)[SIGNATURE_KEY] == signature


def test_an_edited_value_or_signature_is_refused() -> None:
    good = dict(_stored(NEW).annotations)
    edited_value = good[NODEPORTS_KEY].replace('"all":false', '"all":true')
    tampered = StoredPolicy("ns", "p", "u1", "2", tuple(sorted({**good, NODEPORTS_KEY: edited_value}.items())))
    assert _reason(verify_policy(tampered, _keys(NEW))).endswith("(forged, edited, or signed with another key)")
    prefix = good[SIGNATURE_KEY][:-8]
    # The last base64 digit before "==" carries 4 unused bits: another digit decodes to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = good[SIGNATURE_KEY][:-3] + alphabet[alphabet.index(good[SIGNATURE_KEY][-3]) ^ 1] + "=="
    assert base64.b64decode(twin.rsplit(":", 1)[1]) == base64.b64decode(good[SIGNATURE_KEY].rsplit(":", 1)[1])
    for bad in (prefix + "!!!!!!==", prefix[:-20] + "AAAA", "sha1:abc", good[SIGNATURE_KEY].upper(), twin):
        policy = StoredPolicy("ns", "p", "u1", "3", tuple(sorted({**good, SIGNATURE_KEY: bad}.items())))
        assert isinstance(verify_policy(policy, _keys(NEW)), RejectedAnnotation), bad


def test_legacy_hmac_is_accepted_only_with_the_transition_keys() -> None:
    legacy = _stored_legacy(LEGACY_HMAC)
    # Default (transition off): refused, and the reason says how the upgrade proceeds.
    reason = _reason(verify_policy(legacy, _keys(NEW)))
    assert "legacy hmac-sha256" in reason and "NPG_ACCEPT_LEGACY_HMAC=true" in reason
    # Transition on: the old HMAC key verifies it; any other HMAC key does not.
    assert isinstance(verify_policy(legacy, _keys(NEW, legacy=(LEGACY_HMAC,))), Annotation)
    forged = _stored_legacy(b"attacker-hmac-key-0123456789abcd")
    assert "signature does not match" in _reason(verify_policy(forged, _keys(NEW, legacy=(LEGACY_HMAC,))))
    # An HMAC made with the Ed25519 public key's bytes (all a node ever holds) is refused too.
    from_public = _stored_legacy(NEW.public.raw)
    assert isinstance(verify_policy(from_public, _keys(NEW)), RejectedAnnotation)


def test_stale_uid_copy_is_rejected() -> None:
    copied = _stored(NEW, uid="u1")
    moved = StoredPolicy(copied.namespace, copied.name, "u2", "2", copied.annotations)
    assert "stale copy" in _reason(verify_policy(moved, _keys(NEW)))


def test_cache_returns_the_same_object_until_something_changes() -> None:
    cache = VerificationCache()
    policies = [_stored(NEW, "a"), _stored(NEW, "b")]
    first, _ = cache.verify(policies, _keys(NEW))
    second, _ = cache.verify(policies, _keys(NEW))  # an equal key set, another object
    assert all(first[k] is second[k] for k in first)
    # A key rotation re-verifies: an annotation signed with a dropped key is refused.
    third, rejected = cache.verify(policies, _keys(OTHER))
    assert third == {} and len(rejected) == 2
    # Turning the legacy transition off re-verifies too.
    legacy = [_stored_legacy(LEGACY_HMAC, "c")]
    on, _ = cache.verify(legacy, _keys(NEW, legacy=(LEGACY_HMAC,)))
    off, rejected = cache.verify(legacy, _keys(NEW))
    assert list(on) == [("ns", "c")] and off == {} and len(rejected) == 1
    # A removed policy disappears.
    fourth, _ = cache.verify(policies[:1], _keys(NEW))
    assert list(fourth) == [("ns", "a")]


def test_a_rejection_names_an_untrusted_key_id_so_the_enforcer_can_re_read_its_keys() -> None:
    unknown = verify_policy(_stored(NEW), _keys(OLD))
    assert isinstance(unknown, RejectedAnnotation) and unknown.unknown_key_id == NEW.public.key_id
    # Other refusals name none: a trusted key whose signature fails, a stale uid, the legacy form.
    good = dict(_stored(NEW).annotations)
    edited = {**good, NODEPORTS_KEY: good[NODEPORTS_KEY].replace('"all":false', '"all":true')}
    tampered = StoredPolicy("ns", "p", "u1", "2", tuple(sorted(edited.items())))
    moved = StoredPolicy("ns", "p", "u2", "2", _stored(NEW).annotations)
    for policy in (tampered, moved, _stored_legacy(LEGACY_HMAC)):
        result = verify_policy(policy, _keys(NEW))
        assert isinstance(result, RejectedAnnotation) and result.unknown_key_id == "", policy
