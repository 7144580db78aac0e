"""Performance guard of the admission core at benchmark scale (10,000 Services, 50,000 Pods).

The target is a median <= 200 µs per admitted policy; this test allows 5x that so a loaded CI
machine does not make it flaky, and still fails on an accidental scan of every pod or Service.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest

from tests.unit.test_semantics import Obj, ip_from, pod, policy, service
from webhook.admission import AdmissionConfig, mutate, validate
from webhook.review import parse_review
from webhook.snapshot import StaticClusterView

NAMESPACES = 500
SERVICES_PER_NAMESPACE = 20
PODS_PER_SERVICE = 5
POLICIES_PER_NAMESPACE = 5
BUDGET_SECONDS = 5 * 200e-6


@pytest.fixture(scope="module")
def big_view() -> StaticClusterView:
    rnd = random.Random(7)
    services: list[Obj] = []
    pods: list[Obj] = []
    policies: list[Obj] = []
    for n in range(NAMESPACES):
        ns = f"ns-{n}"
        for s in range(SERVICES_PER_NAMESPACE):
            node_port = 30000 + (n * SERVICES_PER_NAMESPACE + s) % 2768
            port = {"name": "http", "port": 80, "targetPort": "http", "nodePort": node_port}
            services.append(service(f"svc-{s}", {"app": f"app-{s}"}, [port], namespace=ns))
            for p in range(PODS_PER_SERVICE):
                labels = {"app": f"app-{s}", "tier": rnd.choice(["a", "b"])}
                pods.append(pod(f"pod-{s}-{p}", labels, [{"name": "http", "containerPort": 8080}], namespace=ns))
        for k in range(POLICIES_PER_NAMESPACE):
            spec = {
                "podSelector": {"matchLabels": {"app": f"app-{k * 4}"}},
                "ingress": [
                    {"from": ip_from("192.0.2.0/24", excepts=["192.0.2.128/25"]), "ports": [{"port": "http"}]},
                    {"from": ip_from("198.51.100.0/24", "2001:db8::/32")},
                ],
            }
            policies.append(policy(f"pol-{k}", spec, namespace=ns, uid=f"uid-{n}-{k}"))
    assert len(services) == 10_000 and len(pods) == 50_000
    return StaticClusterView(services, pods, policies)


def _review(namespace: str, obj: Obj) -> Obj:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "networkpolicies"},
            "operation": "CREATE",
            "namespace": namespace,
            "name": obj["metadata"]["name"],
            "object": obj,
        },
    }


def test_admission_median_latency_at_benchmark_scale(big_view: StaticClusterView) -> None:
    rnd = random.Random(11)
    config = AdmissionConfig(signing_key=b"bench-key")
    timings: list[float] = []
    annotated = 0
    for _ in range(400):
        namespace = f"ns-{rnd.randrange(NAMESPACES)}"
        spec = {
            "podSelector": {"matchLabels": {"app": f"app-{rnd.randrange(SERVICES_PER_NAMESPACE)}"}},
            "ingress": [{"from": ip_from("203.0.113.0/24")}],
        }
        request = parse_review(_review(namespace, policy("new", spec, namespace=namespace)))
        start = time.perf_counter()
        answer = mutate(request, big_view, config)
        timings.append(time.perf_counter() - start)
        annotated += "patch" in answer["response"]
        assert validate(request, big_view, config)["response"]["allowed"] is False  # not yet annotated
    median = statistics.median(timings)
    print(f"mutate median {median * 1e6:.0f} µs over {len(timings)} policies")
    assert annotated == len(timings)  # every policy selects a Service's pods: real work was measured
    assert median <= BUDGET_SECONDS, f"median {median * 1e6:.0f} µs exceeds {BUDGET_SECONDS * 1e6:.0f} µs"
