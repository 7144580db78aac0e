"""Deterministic benchmark inputs: a 500-namespace cluster, AdmissionReviews, signed annotations (pure).

The cluster is the one the (removed) timed unit test built: 500 namespaces x 20 NodePort
Services x 5 Pods (10,000 Services, 50,000 Pods) and 5 NetworkPolicies per namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass
from typing import Any

from contract.annotation import (
    Annotation,
    CidrRule,
    NodePortVerdict,
    PolicyRef,
    Protocol,
    SourceSet,
    render_annotations,
)
from contract.signing import Signer
from enforcer.plan import DesiredState, Network, PortKey
from tests.builders import ip_from, pod, policy, service

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

NAMESPACES = 500
SERVICES_PER_NAMESPACE = 20
PODS_PER_SERVICE = 5
POLICIES_PER_NAMESPACE = 5
NODEPORT_FIRST = 30000
DEFAULT_RANGE_SIZE = 2768  # 30000-32767
BENCH_SIGNING_KEY = Signer.from_seed(b"nodeport-guard-benchmark-seed-32")  # a fixed Ed25519 key


@dataclass(frozen=True, slots=True)
class Cluster:
    services: list[Obj]
    pods: list[Obj]
    policies: list[Obj]


def build_cluster(
    namespaces: int = NAMESPACES,
    services_per_namespace: int = SERVICES_PER_NAMESPACE,
    pods_per_service: int = PODS_PER_SERVICE,
    policies_per_namespace: int = POLICIES_PER_NAMESPACE,
    seed: int = 7,
) -> Cluster:
    """Services with a named targetPort (resolved through each pod's containerPorts), labelled pods,
    and stored policies mixing a named port with ipBlock excepts and a dual-stack allow rule."""
    rnd = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    services: list[Obj] = []
    pods: list[Obj] = []
    policies: list[Obj] = []
    for n in range(namespaces):
        ns = f"ns-{n}"
        for s in range(services_per_namespace):
            node_port = NODEPORT_FIRST + (n * services_per_namespace + s) % DEFAULT_RANGE_SIZE
            port = {"name": "http", "port": 80, "targetPort": "http", "nodePort": node_port}
            services.append(service(f"svc-{s}", {"app": f"app-{s}"}, [port], namespace=ns))
            for p in range(pods_per_service):
                labels = {"app": f"app-{s}", "tier": rnd.choice(["a", "b"])}
                pods.append(
                    pod(
                        f"pod-{s}-{p}", labels, [{"name": "http", "containerPort": 8080}], namespace=ns, phase="Running"
                    )
                )
        for k in range(policies_per_namespace):
            spec = {
                "podSelector": {"matchLabels": {"app": f"app-{(k * 4) % services_per_namespace}"}},
                "ingress": [
                    {"from": ip_from("192.0.2.0/24", excepts=["192.0.2.128/25"]), "ports": [{"port": "http"}]},
                    {"from": ip_from("198.51.100.0/24", "2001:db8::/32")},
                ],
            }
            policies.append(policy(f"pol-{k}", spec, namespace=ns, uid=f"uid-{n}-{k}"))
    return Cluster(services, pods, policies)


def admission_review(namespace: str, obj: Obj, uid: str = "bench") -> Obj:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"},
            "resource": {"group": "networking.k8s.io", "version": "v1", "resource": "networkpolicies"},
            "operation": "CREATE",
            "namespace": namespace,
            "name": obj["metadata"]["name"],
            "object": obj,
        },
    }


def new_policy_reviews(
    count: int,
    namespaces: int = NAMESPACES,
    services_per_namespace: int = SERVICES_PER_NAMESPACE,
    seed: int = 11,
) -> list[Obj]:
    """AdmissionReviews creating a policy that selects one Service's pods in a random namespace."""
    rnd = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    reviews = []
    for i in range(count):
        namespace = f"ns-{rnd.randrange(namespaces)}"
        spec = {
            "podSelector": {"matchLabels": {"app": f"app-{rnd.randrange(services_per_namespace)}"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": ip_from("203.0.113.0/24", excepts=["203.0.113.64/26"]), "ports": [{"port": "http"}]},
                {"from": ip_from("198.51.100.0/25")},
            ],
        }
        reviews.append(admission_review(namespace, policy(f"new-{i}", spec, namespace=namespace), uid=f"bench-{i}"))
    return reviews


# --- enforcer inputs -------------------------------------------------------------------------


def port_cidrs(index: int) -> tuple[str, str, str]:
    """Three disjoint documentation prefixes for the index-th protected port (never collapse together)."""
    return (
        f"192.0.2.{(index % 64) * 4}/30",
        f"198.51.100.{(index % 32) * 8}/29",
        f"203.0.113.{(index % 16) * 16}/28",
    )


def protected_state(
    ports: int, first: int = NODEPORT_FIRST, extra: tuple[int, ...] = (), protocols: tuple[Protocol, ...] = ("TCP",)
) -> DesiredState:
    """`ports` consecutive IPv4 NodePorts from `first` (plus `extra`), 3 allowed prefixes each.

    The i-th port is of protocol `protocols[i % len(protocols)]` (all TCP by default).
    """
    mapping: dict[PortKey, list[Network]] = {}
    for i, port in enumerate([*range(first, first + ports), *extra]):
        mapping[PortKey(4, protocols[i % len(protocols)], port)] = [ipaddress.ip_network(c) for c in port_cidrs(i)]
    return DesiredState.from_mapping(mapping)


def signed_policy_annotations(
    index: int, node_port: int, key: Signer = BENCH_SIGNING_KEY
) -> tuple[PolicyRef, dict[str, str]]:
    """The signed annotations of the index-th benchmark policy protecting one NodePort."""
    ref = PolicyRef(namespace=f"ns-{index // 20}", name=f"pol-{index}", uid=f"uid-{index}")
    allow = SourceSet(False, tuple(sorted(CidrRule(c) for c in port_cidrs(index))))
    verdict = NodePortVerdict(node_port, "TCP", f"svc-{index}", 80, ("IPv4",), allow)
    return ref, render_annotations(Annotation(ref, (verdict.entry(),)), key)


def network_policy_with_annotations(ref: PolicyRef, annotations: dict[str, str], index: int) -> Obj:
    """A full NetworkPolicy object as the apiserver lists it (for the enforcer's memory benchmark)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
            "resourceVersion": str(1000 + index),
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": dict(annotations),
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": ref.name}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": ip_from(*port_cidrs(index)), "ports": [{"port": "http"}]}],
        },
    }


# --- enforcer curve: many policies per NodePort --------------------------------------------------

CLIENT_BLOCK = 64  # addresses of 10.0.0.0/8 reserved per client policy (50,000 policies use 3.2 M)


def client_prefixes(index: int, variant: int = 0) -> tuple[str, str, str]:
    """Three disjoint, non-adjacent IPv4 prefixes of the index-th client policy's own /26 block in
    10.0.0.0/8 (so no two policies' prefixes ever merge); variant 1 is the policy after a change."""
    if not 0 <= index < (1 << 24) // CLIENT_BLOCK:
        raise ValueError(f"client policy {index}: at most {(1 << 24) // CLIENT_BLOCK} fit 10.0.0.0/8")
    base = (10 << 24) + index * CLIENT_BLOCK
    offsets = ((0, 30), (16, 29), (32, 28)) if variant == 0 else ((8, 30), (24, 29), (48, 29))
    a, b, c = (f"{ipaddress.IPv4Address(base + offset)}/{length}" for offset, length in offsets)
    return a, b, c


def client_policy_annotations(
    index: int, node_port: int, variant: int = 0, key: Signer = BENCH_SIGNING_KEY
) -> tuple[PolicyRef, dict[str, str]]:
    """Signed annotations of the index-th "one policy per client network" policy: it selects every
    pod behind one NodePort and allows its three own prefixes (a version-2 part of scope "all")."""
    ref = PolicyRef(namespace=f"ns-{index // 100}", name=f"client-{index}", uid=f"uid-client-{index}")
    allow = SourceSet(False, tuple(sorted(CidrRule(c) for c in client_prefixes(index, variant))))
    verdict = NodePortVerdict(node_port, "TCP", f"svc-{node_port}", 80, ("IPv4",), allow)
    return ref, render_annotations(Annotation(ref, (verdict.entry(),)), key)
