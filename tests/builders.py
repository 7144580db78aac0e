"""Builders of Kubernetes objects as plain API dicts, un-defaulted like users write them (pure).

Shared by the unit tests of the semantics and admission and by the benchmark's cluster generator.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def service(
    name: str,
    selector: dict[str, str] | None,
    ports: list[Obj],
    *,
    type_: str = "NodePort",
    namespace: str = "default",
    ip_families: list[str] | None = None,
    health_check_node_port: int | None = None,
) -> Obj:
    spec: Obj = {"type": type_, "ports": ports}
    if selector is not None:
        spec["selector"] = selector
    if ip_families is not None:
        spec["ipFamilies"] = ip_families
    if health_check_node_port is not None:
        spec["healthCheckNodePort"] = health_check_node_port
        spec["externalTrafficPolicy"] = "Local"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod(
    name: str,
    labels: dict[str, str],
    ports: list[Obj] | None = None,
    *,
    namespace: str = "default",
    phase: str | None = None,
) -> Obj:
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "example", "ports": ports or []}]},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def policy(name: str, spec: Obj, *, namespace: str = "default", uid: str = "") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def ip_from(*cidrs: str, excepts: list[str] | None = None) -> list[Obj]:
    peers: list[Obj] = []
    for cidr in cidrs:
        block: Obj = {"cidr": cidr}
        if excepts:
            block["except"] = excepts
        peers.append({"ipBlock": block})
    return peers


HTTP = {"name": "http", "containerPort": 8080, "protocol": "TCP"}
WEB_PORT = {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}
