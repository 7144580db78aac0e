"""The reconciler writes each differing policy exactly once per pass, in parallel, and counts failures."""

from __future__ import annotations

import threading
from typing import Any

from contract.signing import Signer
from tests.builders import ip_from, pod, policy, service
from webhook.cache import TRIMMERS, ClusterCache
from webhook.reconcile import AnnotationPatch, Reconciler, iter_patches, plan_patches

KEY = Signer.from_seed(b"reconciler-parallel-test-key-001")
NS = "shop"


def _cache(policies: int) -> ClusterCache:
    port = {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}
    cache = ClusterCache()
    cache.replace("services", [TRIMMERS["services"](service("web", {"app": "web"}, [port], namespace=NS))], "1")
    cache.replace("pods", [TRIMMERS["pods"](pod("web-1", {"app": "web"}, namespace=NS))], "1")
    stored = [
        TRIMMERS["networkpolicies"](
            policy(
                f"p{i}",
                {"podSelector": {}, "ingress": [{"from": ip_from(f"10.0.0.{2 * i + 1}/32")}]},
                namespace=NS,
                uid=f"uid-{i}",
            )
        )
        for i in range(policies)
    ]
    for i, obj in enumerate(stored):
        obj["metadata"]["resourceVersion"] = str(100 + i)
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


def _written(p: AnnotationPatch, stored: dict[str, Any], version: str) -> dict[str, Any]:
    """What the API answers to a merge patch of `stored`: the annotations merged, a new resourceVersion."""
    merged = {**(stored["metadata"].get("annotations") or {}), **p.annotations}
    annotations = {k: v for k, v in merged.items() if v is not None}
    return {**stored, "metadata": {**stored["metadata"], "annotations": annotations, "resourceVersion": version}}


def test_the_patch_response_is_cached_so_its_watch_echo_wakes_no_pass() -> None:
    cache = _cache(3)
    responses: dict[str, dict[str, Any]] = {}

    def patch(p: AnnotationPatch) -> dict[str, Any]:
        stored = cache.policy(NS, p.name)
        assert stored is not None and p.resource_version == stored["metadata"]["resourceVersion"]
        responses[p.name] = _written(p, stored, f"rv-{p.name}")
        return responses[p.name]

    patched: list[AnnotationPatch] = []
    reconciler = _reconciler(cache, patch, patched)
    events: list[tuple[str, str, str | None]] = []
    cache.add_listener(lambda kind, ns, name: events.append((kind, ns, name)))
    assert reconciler.reconcile_namespace(NS) == 0
    assert len(patched) == 3 and events == []
    for name, written in responses.items():
        assert cache.policy(NS, name) == TRIMMERS["networkpolicies"](written)
        cache.apply("networkpolicies", "MODIFIED", TRIMMERS["networkpolicies"](written))  # the watch echo
    assert events == []
    assert reconciler.reconcile_namespace(NS) == 0 and len(patched) == 3


def test_a_newer_event_is_not_undone_by_an_older_patch_response() -> None:
    cache = _cache(1)
    stored = cache.policy(NS, "p0")
    assert stored is not None
    newer = {**stored, "metadata": {**stored["metadata"], "resourceVersion": "rv-newer"}}

    def patch(p: AnnotationPatch) -> dict[str, Any]:
        cache.apply("networkpolicies", "MODIFIED", newer)  # someone else's write lands first
        return _written(p, stored, "rv-ours")

    _reconciler(cache, patch, []).reconcile_namespace(NS)
    assert cache.policy(NS, "p0") == newer


def test_the_resync_yields_to_pending_changes_one_namespace_at_a_time() -> None:
    stop = threading.Event()
    reconciler = Reconciler(ClusterCache(), KEY, lambda p: None, stop, excluded_namespaces=("kube-system",))
    reconciler.queue_resync(["a", "b", "kube-system", "c"])
    reconciler.queue_resync(["b", "d"])
    change: dict[str, set[str] | None] = {"x": {"p1"}}
    assert reconciler.next_batch(change) == change  # a change first, the resync left queued
    assert [reconciler.next_batch({}) for _ in range(5)] == [{"a": None}, {"b": None}, {"c": None}, {"d": None}, {}]


class _CountingCache(ClusterCache):
    """Records which namespaces' Services and pods were read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def services_in(self, namespace: str) -> Any:
        self.read.add(namespace)
        return super().services_in(namespace)

    def pods_in(self, namespace: str) -> Any:
        self.read.add(namespace)
        return super().pods_in(namespace)


def test_a_change_reads_only_its_own_namespace() -> None:
    port = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    cache = _CountingCache()
    namespaces = [f"ns-{i}" for i in range(50)]
    cache.replace(
        "services",
        [
            TRIMMERS["services"](service(f"s{k}", {"app": "web"}, [port], namespace=ns))
            for ns in namespaces
            for k in range(20)
        ],
        "1",
    )
    cache.replace("pods", [TRIMMERS["pods"](pod("web-1", {"app": "web"}, namespace=ns)) for ns in namespaces], "1")
    reconciler = Reconciler(cache, KEY, lambda p: None, threading.Event())
    cache.read.clear()
    reconciler.reconcile_namespace("ns-7")
    reconciler.reconcile_namespace("ns-7", {"p0"})
    assert cache.read == {"ns-7"}


def test_patches_are_planned_in_chunks_with_the_same_result() -> None:
    cache = _cache(23)
    whole = plan_patches(NS, cache, KEY)
    assert len(whole) == 23
    assert list(iter_patches(NS, cache, KEY, chunk=5)) == whole
    assert list(iter_patches(NS, cache, KEY, names={"p3", "p17", "gone"}, chunk=1)) == [
        p for p in whole if p.name in ("p3", "p17")
    ]


def test_the_first_patch_is_written_before_the_last_is_planned() -> None:
    cache = _cache(30)
    planned = iter_patches(NS, cache, KEY, chunk=4)
    assert next(planned).name == "p0"
    # A change made now, after the first chunk: the later chunks are planned from it.
    cache.apply("networkpolicies", "DELETED", cache.policy(NS, "p9") or {})
    assert "p9" not in {p.name for p in planned}
