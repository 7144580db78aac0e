"""Inputs of the scale curves: one namespace of NodePort Services whose pods every policy selects (pure).

The shape the issue measured: 20 NodePort Services x 5 pods, and N NetworkPolicies that all
select every pod (`podSelector: {}`) and each allow one different, non-adjacent /32 (so no two
policies' sources merge). The same shape feeds the admission curve (in-process and over HTTP)
and the reconciler curve (on the real apiserver).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
from collections.abc import Mapping
from typing import Any

from bench.data import admission_review
from webhook.admission import AdmissionConfig, mutate
from webhook.cluster_view import ClusterView
from webhook.review import JsonPatch, parse_review

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

SERVICES = 20
PODS_PER_SERVICE = 5
FIRST_HOST = ipaddress.IPv4Address("10.0.0.1")
CONTAINER_PORT = {"name": "http", "containerPort": 8080, "protocol": "TCP"}


def host(index: int) -> str:
    """The index-th allowed host: every other address from 10.0.0.1, so no two are adjacent."""
    return str(FIRST_HOST + 2 * index)


def service_name(index: int) -> str:
    return f"svc-{index}"


def app_labels(service: int) -> dict[str, str]:
    return {"app": f"app-{service}"}


def service_object(namespace: str, index: int, node_port: int | None = None) -> Obj:
    """NodePort Service `svc-index` selecting `app-index` pods, targetPort named `http`."""
    port: Obj = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    if node_port is not None:
        port["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(index), "namespace": namespace},
        "spec": {"type": "NodePort", "selector": app_labels(index), "ports": [port]},
    }


def pod_object(namespace: str, service: int, replica: int, phase: str | None = None) -> Obj:
    """Replica `replica` of the pods behind Service `service` (all replicas share one pod group)."""
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{service}-{replica}", "namespace": namespace, "labels": app_labels(service)},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1", "ports": [dict(CONTAINER_PORT)]}]},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def policy_object(namespace: str, index: int, uid: str = "") -> Obj:
    """Policy `allow-index`: selects every pod, allows host(index) on every port."""
    meta: Obj = {"name": f"allow-{index}", "namespace": namespace}
    if uid:
        meta["uid"] = uid
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": f"{host(index)}/32"}}]}],
        },
    }


def namespace_objects(
    namespace: str, policies: int, first_node_port: int | None = 30000
) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(services, pods, policies) of the namespace; nodePorts from `first_node_port` (None: allocated)."""
    services = [
        service_object(namespace, s, None if first_node_port is None else first_node_port + s) for s in range(SERVICES)
    ]
    pods = [pod_object(namespace, s, r, phase="Running") for s in range(SERVICES) for r in range(PODS_PER_SERVICE)]
    stored = [policy_object(namespace, i, uid=f"uid-{namespace}-{i}") for i in range(policies)]
    return services, pods, stored


def create_review(namespace: str, index: int, uid: str = "bench") -> Obj:
    """AdmissionReview creating policy `allow-index` (a new one: index beyond the stored ones)."""
    return admission_review(namespace, policy_object(namespace, index), uid=uid)


def with_patch(obj: Mapping[str, Any], patch: JsonPatch) -> Obj:
    """The object after the webhook's annotation JSONPatch (the only paths it writes)."""
    out: Obj = {**obj, "metadata": dict(obj.get("metadata") or {})}
    meta = out["metadata"]
    for op in patch:
        path = str(op["path"])
        if path == "/metadata":
            out["metadata"] = dict(op["value"])
            meta = out["metadata"]
        elif path == "/metadata/annotations":
            meta["annotations"] = dict(op["value"])
        else:
            key = path.removeprefix("/metadata/annotations/").replace("~1", "/").replace("~0", "~")
            annotations = dict(meta.get("annotations") or {})
            if op["op"] == "remove":
                annotations.pop(key, None)
            else:
                annotations[key] = op["value"]
            meta["annotations"] = annotations
    return out


def review_pairs(
    namespace: str, first_index: int, count: int, view: ClusterView, config: AdmissionConfig
) -> tuple[list[Obj], list[Obj]]:
    """(CREATE reviews for /mutate, the same policies as mutated, for /validate) of `count` new policies.

    The /validate bodies carry the annotations the mutating webhook wrote, as the apiserver sends them.
    """
    to_mutate, to_validate = [], []
    for i in range(first_index, first_index + count):
        review = create_review(namespace, i, uid=f"bench-{i}")
        answer = mutate(parse_review(review), view, config)["response"]
        if not answer.get("allowed") or "patch" not in answer:
            raise RuntimeError(f"allow-{i}: expected an annotated admission, got {json.dumps(answer)[:300]}")
        patch = json.loads(base64.b64decode(answer["patch"]))
        to_mutate.append(review)
        to_validate.append(admission_review(namespace, with_patch(review["request"]["object"], patch), uid=f"v-{i}"))
    return to_mutate, to_validate
