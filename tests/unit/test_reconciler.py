"""The reconciler writes each differing policy exactly once per pass, in parallel, and counts failures."""

from __future__ import annotations

import threading
from typing import Any

from tests.builders import ip_from, pod, policy, service
from webhook.cache import TRIMMERS, ClusterCache
from webhook.reconcile import AnnotationPatch, Reconciler
from webhook.signing import Signer

KEY = Signer.from_seed(b"reconciler-parallel-test-key-001")
NS = "shop"


def _cache(policies: int) -> ClusterCache:
    port = {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}
    cache = ClusterCache()
    cache.replace("services", [TRIMMERS["services"](service("web", {"app": "web"}, [port], namespace=NS))], "1")
    cache.replace("pods", [TRIMMERS["pods"](pod("web-1", {"app": "web"}, namespace=NS))], "1")
    stored = [
        TRIMMERS["networkpolicies"](
            policy(f"p{i}", {"podSelector": {}, "ingress": [{"from": ip_from(f"10.0.0.{2 * i + 1}/32")}]},
                   namespace=NS, uid=f"uid-{i}")
        )
        for i in range(policies)
    ]
    cache.replace("networkpolicies", stored, "1")
    return cache


def _reconciler(cache: ClusterCache, patch: Any, patched: list[AnnotationPatch]) -> Reconciler:
    return Reconciler(cache, KEY, patch, threading.Event(), on_patched=patched.append, patch_workers=4)


def test_every_policy_without_its_annotation_is_written_once() -> None:
    cache = _cache(30)
    lock = threading.Lock()
    written: list[str] = []
    threads: set[str] = set()

    def patch(p: AnnotationPatch) -> None:
        with lock:
            written.append(p.name)
            threads.add(threading.current_thread().name)

    patched: list[AnnotationPatch] = []
    reconciler = _reconciler(cache, patch, patched)
    assert reconciler.reconcile_namespace(NS) == 0
    assert sorted(written) == sorted(f"p{i}" for i in range(30))
    assert len(patched) == 30
    assert all(t.startswith("reconciler-patch") for t in threads)


def test_failed_writes_are_counted_and_the_others_still_made() -> None:
    cache = _cache(10)

    def patch(p: AnnotationPatch) -> None:
        if p.name in ("p3", "p7"):
            raise RuntimeError("409 Conflict")

    patched: list[AnnotationPatch] = []
    assert _reconciler(cache, patch, patched).reconcile_namespace(NS) == 2
    assert sorted(p.name for p in patched) == sorted(f"p{i}" for i in range(10) if i not in (3, 7))


def test_a_true_annotation_is_not_written_again() -> None:
    cache = _cache(1)
    patched: list[AnnotationPatch] = []
    reconciler = _reconciler(cache, lambda p: None, patched)
    reconciler.reconcile_namespace(NS)
    (first,) = patched
    stored = cache.policy(NS, "p0")
    assert stored is not None
    meta = {**stored["metadata"], "annotations": {k: v for k, v in first.annotations.items() if v is not None}}
    cache.apply("networkpolicies", "MODIFIED", {**stored, "metadata": meta})
    assert reconciler.reconcile_namespace(NS) == 0
    assert len(patched) == 1
