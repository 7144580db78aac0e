"""The reconciler re-signs: a stored HMAC or other-key signature is rewritten, its own Ed25519 one is kept."""

from __future__ import annotations

from typing import Any

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY, read_signed
from contract.signing import Signer, legacy_hmac_signature
from tests.builders import HTTP, pod, policy, service
from webhook.cache import TRIMMERS, ClusterCache
from webhook.reconcile import AnnotationPatch, plan_patches

KEY, OLD = Signer.from_seed(b"reconciler-test-signing-key-0001"), Signer.from_seed(b"reconciler-test-signing-key-0002")


def _cache(annotations: dict[str, str] | None) -> ClusterCache:
    svc = service("web", {"app": "web"}, [{"port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}])
    deny = policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]}, uid="uid-1")
    if annotations is not None:
        deny["metadata"]["annotations"] = annotations
    cache = ClusterCache()
    objects: dict[str, list[dict[str, Any]]] = {
        "services": [svc],
        "pods": [pod("web-1", {"app": "web"}, [HTTP], phase="Running")],
        "networkpolicies": [deny],
    }
    for kind, objs in objects.items():
        cache.replace(kind, [TRIMMERS[kind](o) for o in objs], "1")
    return cache


def _desired_value() -> str:
    (patch,) = plan_patches("default", _cache(None), KEY)
    value = patch.annotations[NODEPORTS_KEY]
    assert isinstance(value, str)
    return value


def test_a_stored_hmac_signature_is_rewritten_with_ed25519_and_nothing_else() -> None:
    value = _desired_value()
    stored = {
        NODEPORTS_KEY: value,
        SIGNATURE_KEY: legacy_hmac_signature(b"old-shared-key-0123456789abcdef!", value.encode()),
    }
    patches = plan_patches("default", _cache(stored), KEY)
    assert patches == [AnnotationPatch("default", "deny", {SIGNATURE_KEY: KEY.sign(value.encode())})]
    signed = {**stored, **{k: v for k, v in patches[0].annotations.items() if v is not None}}
    assert read_signed(signed, "default", "deny", "uid-1", KEY.verifier()) is not None


def test_a_signature_of_the_previous_key_is_rewritten_and_the_current_one_is_stable() -> None:
    value = _desired_value()
    rotated = plan_patches("default", _cache({NODEPORTS_KEY: value, SIGNATURE_KEY: OLD.sign(value.encode())}), KEY)
    assert rotated == [AnnotationPatch("default", "deny", {SIGNATURE_KEY: KEY.sign(value.encode())})]
    # Ed25519 is deterministic: what the reconciler wrote, it does not rewrite (no churn, no watch storm).
    assert plan_patches("default", _cache({NODEPORTS_KEY: value, SIGNATURE_KEY: KEY.sign(value.encode())}), KEY) == []
