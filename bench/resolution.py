"""Benchmark 2: the pure admission core (mutate / resolve_contribution) on the 10k-Service snapshot (in-process)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bench import data
from bench.stats import Figure, Target, summarize
from webhook.admission import AdmissionConfig, mutate
from webhook.cache import TRIMMERS, ClusterCache
from webhook.cluster_view import ClusterView
from webhook.contribution import resolve_contribution
from webhook.review import AdmissionRequest, parse_review
from webhook.semantics import compile_policy
from webhook.snapshot import StaticClusterView

logger = logging.getLogger(__name__)

NAME = "resolution"
POLICIES = 400
TARGET = Target("median", "<=", 200.0, "median <= 200 µs")
NOTES = (
    "The pure admission core in one process, timed per policy with `time.perf_counter` (garbage "
    "collection enabled, as in the server). Each sample is one new policy selecting one Service's pods "
    "in a random namespace of the snapshot (500 namespaces, 10,000 NodePort Services with named "
    "targetPorts, 50,000 Pods, 2,500 stored policies). `mutate` is the whole /mutate decision "
    "(compile, resolve, sign, patch); `resolve_contribution` is the "
    "resolution alone, as admission runs it (the admitted policy's own part: its Services and their pods, never "
    "the other policies; the policy is compiled outside the timed call). Both views are timed: "
    "`StaticClusterView` (the pure snapshot) and `ClusterCache` (the webhook's production cache, filled "
    "with the same objects through its trimmers)."
)


def fill_cache(cluster: data.Cluster) -> ClusterCache:
    """The production cache holding the cluster, as its list+watch would fill it (trimmed objects)."""
    cache = ClusterCache()
    cache.replace("services", [TRIMMERS["services"](o) for o in cluster.services], "1")
    cache.replace("pods", [TRIMMERS["pods"](o) for o in cluster.pods], "1")
    cache.replace("networkpolicies", [TRIMMERS["networkpolicies"](o) for o in cluster.policies], "1")
    return cache


def _time_each(requests: list[AdmissionRequest], call: Callable[[AdmissionRequest], object]) -> list[float]:
    for r in requests[:20]:
        call(r)  # warm-up: first calls compile code paths and fill allocator pools
    samples = []
    for r in requests:
        start = time.perf_counter()
        call(r)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def _check_annotates(requests: list[AdmissionRequest], view: ClusterView, config: AdmissionConfig) -> int:
    # Every sampled policy must select pods behind a NodePort: otherwise no real work was timed.
    return sum("patch" in mutate(r, view, config)["response"] for r in requests)


def run(workdir: Path) -> list[Figure]:
    started = time.perf_counter()
    cluster = data.build_cluster()
    static = StaticClusterView(cluster.services, cluster.pods, cluster.policies)
    cache = fill_cache(cluster)
    built = time.perf_counter() - started
    requests = [parse_review(r) for r in data.new_policy_reviews(POLICIES)]
    config = AdmissionConfig(signing_key=data.BENCH_SIGNING_KEY)
    for view_name, view in (("StaticClusterView", static), ("ClusterCache", cache)):
        annotated = _check_annotates(requests, view, config)
        if annotated != len(requests):
            raise RuntimeError(f"{view_name}: only {annotated}/{len(requests)} benchmark policies got an annotation")
    inputs = {
        "namespaces": data.NAMESPACES,
        "services": len(cluster.services),
        "pods": len(cluster.pods),
        "stored_policies": len(cluster.policies),
        "policies_timed": POLICIES,
        "snapshot_build_seconds": round(built, 2),
    }
    compiled = {id(r): compile_policy(r.object or {}, strict=True) for r in requests}
    gc.collect()
    figures = []
    for view_name, view in (("StaticClusterView", static), ("ClusterCache", cache)):
        mutate_samples = _time_each(requests, lambda r, v=view: mutate(r, v, config))  # type: ignore[misc]
        resolve_samples = _time_each(
            requests,
            lambda r, v=view: resolve_contribution(  # type: ignore[misc]
                compiled[id(r)], (r.object or {}).get("spec", {}).get("podSelector"), v
            ),
        )
        figures.append(
            Figure(
                NAME,
                f"mutate per policy ({view_name})",
                "µs",
                summarize(mutate_samples),
                TARGET,
                inputs={**inputs, "view": view_name},
            )
        )
        figures.append(
            Figure(
                NAME,
                f"resolve_contribution per policy ({view_name})",
                "µs",
                summarize(resolve_samples),
                TARGET,
                inputs={**inputs, "view": view_name},
            )
        )
    return figures
