"""Builders for the Kubernetes objects tests create, and readers for our annotation (pure)."""

from __future__ import annotations

import json
from typing import Any

from contract.annotation import NODEPORTS_KEY, Annotation, SourceSet, decode
from kubectl_plugin.cli import inspect_policy, namespace_verdicts

Obj = dict[str, Any]


def pod(name: str, labels: dict[str, str], ports: list[Obj] | None = None, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    container: Obj = {"name": "app", "image": "registry.invalid/app:1"}
    if ports:
        container["ports"] = ports
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [container]}}


def nodeport_service(
    name: str, selector: dict[str, str], ports: list[Obj], service_type: str = "NodePort", **spec: Any
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": service_type, "selector": selector, "ports": ports, **spec},
    }


def policy(name: str, pod_selector: Obj, ingress: list[Obj] | None = None, **spec: Any) -> Obj:
    body: Obj = {"podSelector": pod_selector, **spec}
    if ingress is not None:
        body["ingress"] = ingress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": body}


def as_list(*objects: Obj) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


def annotation_of(obj: Obj) -> Annotation | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(NODEPORTS_KEY)
    return decode(value) if value is not None else None


def composed_verdict(policies: list[Obj], node_port: int, protocol: str) -> SourceSet | None:
    """A NodePort's verdict composed from the stored annotations as the enforcers compose them
    (signatures not checked here); None when no annotation lists it."""
    reports = [inspect_policy(p, None) for p in policies]
    return namespace_verdicts(reports).get((node_port, protocol))


def node_ports_of(obj: Obj) -> dict[tuple[int, str], Any]:
    annotation = annotation_of(obj)
    if annotation is None:
        return {}
    return {(v.node_port, v.protocol): v for v in annotation.node_ports}
