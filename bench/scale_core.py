"""Scale curve, in process: /mutate, /validate and the reconciler's pass vs policies in one namespace (pure core).

The issue's shape (bench/scale_data.py): 20 NodePort Services x 5 pods and N stored policies that
all select every pod, each allowing its own non-adjacent /32. Admission must cost the same at every
N (it never reads the other policies); the reconciler's pass after a Pod event must not grow with
the cost of resolving N policies either (its memo, webhook.admission.AnnotationMemo).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import scale_data
from bench.data import BENCH_SIGNING_KEY, Cluster
from bench.resolution import fill_cache
from bench.stats import Figure, JsonScalar, Target, not_measured, summarize
from webhook.admission import AdmissionConfig, AnnotationMemo, mutate, resolve_all_annotations, validate
from webhook.cache import TRIMMERS, ClusterCache
from webhook.cluster_view import ClusterView
from webhook.reconcile import plan_patches
from webhook.review import AdmissionRequest, parse_review

logger = logging.getLogger(__name__)

NAME = "scale-core"
NAMESPACE = "scale"
SIZES = (1, 10, 100, 1_000, 5_000)
SAMPLES = 300
WARMUP = 30
PASSES = 20
PASS_BUDGET_SECONDS = 20.0
TARGET_AT = 1_000
MEDIAN_TARGET = Target("median", "<=", 5.0, "median <= 5 ms")
P99_TARGET = Target("p99", "<=", 20.0, "p99 <= 20 ms")
NOTES = (
    "The pure admission core in one process (`webhook.admission.mutate` / `validate` over the production "
    "`ClusterCache`, filled through its trimmers), timed per request with `time.perf_counter`, garbage "
    "collection enabled. One namespace holds 20 NodePort Services (named targetPort) x 5 Running pods and N "
    "stored policies that all select every pod (`podSelector: {}`), each allowing one different, "
    f"non-adjacent /32 (10.0.0.1, 10.0.0.3, ...). Per N, {SAMPLES} distinct new policies of the same shape "
    f"are admitted (after {WARMUP} warm-up requests): /mutate gets the CREATE review, /validate the same "
    "policy carrying the annotations /mutate wrote. Targets (issue 9): median <= 5 ms and p99 <= 20 ms at "
    "1,000 policies; they are shown at every N because admission must not grow with N. **Reconciler pass "
    "after a Pod event**: stored annotations true, a new replica joins an existing pod group, then "
    "`reconcile.plan_patches` over the namespace (what the reconciler runs after a Pod event) is timed, "
    f"with the reconciler's memo of desired annotations and without it (up to {PASSES} passes, "
    f"{PASS_BUDGET_SECONDS:.0f} s budget per N); every pass must plan 0 patches."
)


def _label(n: int) -> str:
    return f"{n:,} {'policy' if n == 1 else 'policies'} in the namespace"


def expected_figures() -> list[Figure]:
    out = []
    for n in SIZES:
        out += [
            not_measured(NAME, f"mutate, {_label(n)}", "ms", MEDIAN_TARGET, ""),
            not_measured(NAME, f"validate, {_label(n)}", "ms", MEDIAN_TARGET, ""),
        ]
        if n == TARGET_AT:
            out += [
                not_measured(NAME, f"mutate p99, {_label(n)}", "ms", P99_TARGET, ""),
                not_measured(NAME, f"validate p99, {_label(n)}", "ms", P99_TARGET, ""),
            ]
    for n in SIZES:
        out += [
            not_measured(NAME, f"reconciler pass after a Pod event, {_label(n)}", "ms", None, ""),
            not_measured(NAME, f"reconciler pass without its memo, {_label(n)}", "ms", None, ""),
        ]
    return out


Handler = Callable[[AdmissionRequest, ClusterView, AdmissionConfig], dict[str, Any]]


def _time_each(
    bodies: Sequence[dict[str, Any]], handler: Handler, view: ClusterView, config: AdmissionConfig
) -> list[float]:
    requests = [parse_review(b) for b in bodies]
    for r in requests[:WARMUP]:
        handler(r, view, config)
    samples = []
    for r in requests[WARMUP:]:
        start = time.perf_counter()
        answer = handler(r, view, config)
        samples.append((time.perf_counter() - start) * 1e3)
        if not answer["response"].get("allowed"):
            raise RuntimeError(f"{r.name}: denied: {answer['response'].get('status')}")
    return samples


def settled_cache(policies: int) -> tuple[ClusterCache, AdmissionConfig]:
    """The namespace in the production cache, every stored policy carrying its true annotations."""
    services, pods, stored = scale_data.namespace_objects(NAMESPACE, policies)
    cache = fill_cache(Cluster(services, pods, stored))
    config = AdmissionConfig(signing_key=BENCH_SIGNING_KEY)
    desired = resolve_all_annotations(NAMESPACE, cache, BENCH_SIGNING_KEY, config.compiled)
    annotated = []
    for obj in stored:
        meta = {**obj["metadata"], "annotations": desired[obj["metadata"]["name"]] or {}}
        annotated.append(TRIMMERS["networkpolicies"]({**obj, "metadata": meta}))
    cache.replace("networkpolicies", annotated, "2")
    return cache, config


def _passes(cache: ClusterCache, config: AdmissionConfig, memo: AnnotationMemo | None, tag: str) -> list[float]:
    plan_patches(NAMESPACE, cache, BENCH_SIGNING_KEY, config.compiled, None, memo)  # warm
    samples: list[float] = []
    deadline = time.monotonic() + PASS_BUDGET_SECONDS
    while len(samples) < PASSES and (len(samples) < 3 or time.monotonic() < deadline):
        replica = scale_data.pod_object(NAMESPACE, len(samples) % scale_data.SERVICES, 100 + len(samples), "Running")
        replica["metadata"]["name"] = f"extra-{tag}-{len(samples)}"
        cache.apply("pods", "ADDED", TRIMMERS["pods"](replica))
        start = time.perf_counter()
        patches = plan_patches(NAMESPACE, cache, BENCH_SIGNING_KEY, config.compiled, None, memo)
        samples.append((time.perf_counter() - start) * 1e3)
        if patches:
            raise RuntimeError(f"a replica joining its pod group planned {len(patches)} patches, expected 0")
    return samples


def run(workdir: Path) -> list[Figure]:
    admission: list[Figure] = []
    passes: list[Figure] = []
    for n in SIZES:
        cache, config = settled_cache(n)
        to_mutate, to_validate = scale_data.review_pairs(NAMESPACE, n, SAMPLES + WARMUP, cache, config)
        gc.collect()
        inputs: dict[str, JsonScalar] = {
            "policies_in_namespace": n,
            "services": scale_data.SERVICES,
            "pods": scale_data.SERVICES * scale_data.PODS_PER_SERVICE,
            "requests_timed": SAMPLES,
            "view": "ClusterCache",
        }
        mutated = summarize(_time_each(to_mutate, mutate, cache, config))
        validated = summarize(_time_each(to_validate, validate, cache, config))
        admission += [
            Figure(NAME, f"mutate, {_label(n)}", "ms", mutated, MEDIAN_TARGET, inputs=inputs),
            Figure(NAME, f"validate, {_label(n)}", "ms", validated, MEDIAN_TARGET, inputs=inputs),
        ]
        if n == TARGET_AT:
            admission += [
                Figure(NAME, f"mutate p99, {_label(n)}", "ms", mutated, P99_TARGET, inputs=inputs),
                Figure(NAME, f"validate p99, {_label(n)}", "ms", validated, P99_TARGET, inputs=inputs),
            ]
        pass_inputs: dict[str, JsonScalar] = {**inputs, "change": "a replica joins an existing pod group"}
        del pass_inputs["requests_timed"]
        with_memo = _passes(cache, config, AnnotationMemo(), "memo")
        without = _passes(cache, config, None, "plain")
        passes += [
            Figure(
                NAME,
                f"reconciler pass after a Pod event, {_label(n)}",
                "ms",
                summarize(with_memo),
                None,
                inputs={**pass_inputs, "memo": "AnnotationMemo"},
            ),
            Figure(
                NAME,
                f"reconciler pass without its memo, {_label(n)}",
                "ms",
                summarize(without),
                None,
                inputs={**pass_inputs, "memo": "none"},
                note="every policy resolved, rendered and signed again (the cost before the memo)",
            ),
        ]
        logger.info("scale-core N=%d done", n)
    return admission + passes
