"""The reconciler's memo of desired annotations is a pure cache: with it, every pass answers as without it."""

from __future__ import annotations

from typing import Any

from contract.signing import Signer
from tests.builders import ip_from, pod, policy, service
from webhook.admission import AnnotationMemo, resolve_all_annotations
from webhook.cache import TRIMMERS, ClusterCache

KEY = Signer.from_seed(b"annotation-memo-test-key-0000001")
OTHER_KEY = Signer.from_seed(b"annotation-memo-test-key-0000002")
NS = "shop"
HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _web(name: str, node_port: int, selector: dict[str, str]) -> dict[str, Any]:
    port = {"name": "http", "port": 80, "targetPort": "http", "nodePort": node_port, "protocol": "TCP"}
    return TRIMMERS["services"](service(name, selector, [port], namespace=NS))


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return TRIMMERS["pods"](pod(name, labels, HTTP, namespace=NS, phase="Running"))


def _policy(name: str, cidr: str, selector: dict[str, Any] | None = None, uid: str = "") -> dict[str, Any]:
    spec = {"podSelector": selector or {}, "ingress": [{"from": ip_from(cidr)}]}
    return TRIMMERS["networkpolicies"](policy(name, spec, namespace=NS, uid=uid or f"uid-{name}"))


def _cache() -> ClusterCache:
    cache = ClusterCache()
    cache.replace("services", [_web("web", 30080, {"app": "web"})], "1")
    cache.replace("pods", [_pod("web-1", {"app": "web", "tier": "a"})], "1")
    cache.replace(
        "networkpolicies",
        [_policy("a", "198.51.100.0/24"), _policy("b", "203.0.113.0/24", {"matchLabels": {"tier": "a"}})],
        "1",
    )
    return cache


def _check(cache: ClusterCache, memo: AnnotationMemo, key: Signer = KEY) -> dict[str, Any]:
    with_memo = resolve_all_annotations(NS, cache, key, annotations=memo)
    assert with_memo == resolve_all_annotations(NS, cache, key)
    return with_memo


def test_memo_answers_as_a_fresh_resolution_through_every_kind_of_change() -> None:
    cache = _cache()
    memo = AnnotationMemo()
    first = _check(cache, memo)
    assert len(memo) == 2 and first["a"] is not None
    assert _check(cache, memo) == first  # warm: the same answers
    # A replica joining the pod group changes nothing.
    cache.apply("pods", "ADDED", _pod("web-2", {"app": "web", "tier": "a"}))
    assert _check(cache, memo) == first
    # A pod with other labels makes b's selection partial: b's entry changes (pods: some).
    cache.apply("pods", "ADDED", _pod("web-3", {"app": "web", "tier": "b"}))
    partial = _check(cache, memo)
    assert partial["b"] != first["b"]
    # A new Service behind the same pods: both policies gain an entry.
    cache.apply("services", "ADDED", _web("web-admin", 30081, {"app": "web"}))
    two = _check(cache, memo)
    assert two["a"] != partial["a"] and two["b"] != partial["b"]
    # The policy object replaced (a new uid, a new spec): recomputed.
    cache.apply("networkpolicies", "MODIFIED", _policy("a", "198.51.100.0/25", uid="uid-a2"))
    assert _check(cache, memo)["a"] != two["a"]
    # Another signing key: nothing stale is returned.
    assert _check(cache, memo, OTHER_KEY) != _check(cache, memo)


def test_memo_forgets_deleted_policies_on_a_namespace_pass() -> None:
    cache = _cache()
    memo = AnnotationMemo()
    _check(cache, memo)
    cache.apply("networkpolicies", "DELETED", _policy("b", "203.0.113.0/24"))
    assert set(_check(cache, memo)) == {"a"}
    assert len(memo) == 1


def test_a_pass_over_some_names_uses_and_fills_the_same_memo() -> None:
    cache = _cache()
    memo = AnnotationMemo()
    only_a = resolve_all_annotations(NS, cache, KEY, names={"a"}, annotations=memo)
    assert set(only_a) == {"a"} and len(memo) == 1
    assert _check(cache, memo)["a"] == only_a["a"]
