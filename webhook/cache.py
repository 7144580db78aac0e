"""In-memory, indexed cache of Services, Pods and NetworkPolicies fed by list+watch (I/O edge).

Implements `cluster_view.ClusterView` for the admission path (no API call per admission) and
tells the reconciler which namespaces changed. Objects are trimmed to the fields the
semantics use, which keeps 50,000 pods within the webhook's memory budget.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from contract.annotation import ANNOTATION_PREFIX
from kube.listwatch import EventType, Obj, ObjectSink
from webhook.doors import node_address_set
from webhook.objects import selector_matches
from webhook.services import allocated_node_ports

KINDS = ("services", "pods", "networkpolicies", "nodes")
Key = tuple[str, str]


def _meta(obj: Obj, *, labels: bool = False, annotations: bool = False, uid: bool = False) -> Obj:
    src = obj.get("metadata") or {}
    meta: Obj = {"name": src.get("name", ""), "namespace": src.get("namespace", "")}
    if labels and src.get("labels"):
        meta["labels"] = dict(src["labels"])
    if annotations:
        ours = {k: v for k, v in (src.get("annotations") or {}).items() if k.startswith(ANNOTATION_PREFIX)}
        if ours:
            meta["annotations"] = ours
    if uid:
        meta["uid"] = src.get("uid", "")
        meta["resourceVersion"] = src.get("resourceVersion", "")
    return meta


def _containers_with_ports(containers: list[Obj]) -> list[Obj]:
    return [{"ports": [dict(p) for p in c["ports"]]} for c in containers if c.get("ports")]


def trim_pod(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    # Restartable init containers (sidecars) serve named ports too.
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    trimmed: Obj = {
        "metadata": _meta(obj, labels=True),
        "spec": {"containers": _containers_with_ports(spec.get("containers") or [])},
    }
    if sidecars:
        trimmed["spec"]["initContainers"] = [{**c, "restartPolicy": "Always"} for c in _containers_with_ports(sidecars)]
    phase = (obj.get("status") or {}).get("phase")
    if phase:
        # Finished pods are never endpoints: the semantics skip them.
        trimmed["status"] = {"phase": phase}
    return trimmed


def trim_service(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    keep = (
        "type",
        "selector",
        "ports",
        "ipFamilies",
        "ipFamilyPolicy",
        "healthCheckNodePort",
        # The doors (webhook/doors.py) and what explain shows beside them.
        "externalIPs",
        "allocateLoadBalancerNodePorts",
        "loadBalancerSourceRanges",
    )
    trimmed: Obj = {"metadata": _meta(obj), "spec": {k: spec[k] for k in keep if k in spec}}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    if ingress:
        trimmed["status"] = {
            "loadBalancer": {"ingress": [{k: e[k] for k in ("ip", "ipMode") if k in e} for e in ingress]}
        }
    return trimmed


def trim_node(obj: Obj) -> Obj:
    """A Node's name and addresses: its addresses are never doors."""
    addresses = (obj.get("status") or {}).get("addresses") or []
    return {
        "metadata": {"name": (obj.get("metadata") or {}).get("name", ""), "namespace": ""},
        "status": {"addresses": [{"type": a.get("type"), "address": a.get("address")} for a in addresses]},
    }


def trim_policy(obj: Obj) -> Obj:
    return {"metadata": _meta(obj, annotations=True, uid=True), "spec": obj.get("spec") or {}}


TRIMMERS: dict[str, Callable[[Obj], Obj]] = {
    "services": trim_service,
    "pods": trim_pod,
    "networkpolicies": trim_policy,
    "nodes": trim_node,
}


class ClusterCache(ObjectSink[Obj]):
    """Thread-safe store; reads return snapshots (lists) so callers never see a dict mutate."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {k: defaultdict(dict) for k in KINDS}
        # pods: namespace -> (label key, value) -> pod names, for selector lookups without a scan.
        self._pod_labels: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
        # NodePort number -> the Services (namespace, name) holding it, cluster-wide.
        self._node_ports: dict[int, set[tuple[str, str]]] = defaultdict(set)
        self._listeners: list[Callable[[str, str, str | None], None]] = []
        self._node_addresses: frozenset[str] = frozenset()

    def add_listener(self, on_change: Callable[[str, str, str | None], None]) -> None:
        """Called with (kind, namespace, name) after every change, outside the cache lock; name is
        None when a relist changed the namespace (any object of that kind in it may have changed)."""
        self._listeners.append(on_change)

    # --- ObjectSink --------------------------------------------------------------------

    def replace(self, kind: str, objects: list[Obj], resource_version: str) -> None:
        with self._lock:
            before = self._objects[kind]
            after: dict[str, dict[str, Obj]] = defaultdict(dict)
            for obj in objects:
                ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                after[ns][name] = obj
            changed = {ns for ns in set(before) | set(after) if before.get(ns) != after.get(ns)}
            self._objects[kind] = after
            if kind == "pods":
                self._pod_labels = defaultdict(lambda: defaultdict(set))
                for ns, pods in after.items():
                    for name, pod in pods.items():
                        self._index_pod(ns, name, pod)
            if kind == "services":
                self._node_ports = defaultdict(set)
                for ns, services in after.items():
                    for name, service in services.items():
                        self._index_service(ns, name, service)
            if kind == "nodes":
                changed = self._reindex_nodes()
        for ns in sorted(changed):
            self._notify(kind, ns, None)

    def _reindex_nodes(self) -> set[str]:
        """Recompute the Node addresses (under the lock); the namespaces to re-resolve when they
        changed (every one with a Service: any door may be, or stop being, a Node address)."""
        addresses = node_address_set(list(self._objects["nodes"].get("", {}).values()))
        if addresses == self._node_addresses:
            return set()
        self._node_addresses = addresses
        return set(self._objects["services"])

    def apply(self, kind: str, event: EventType, obj: Obj) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        with self._lock:
            store = self._objects[kind][ns]
            old = store.get(name)
            if kind == "pods" and old is not None:
                self._unindex_pod(ns, name, old)
            if kind == "services" and old is not None:
                self._unindex_service(ns, name, old)
            if event == "DELETED":
                store.pop(name, None)
                if not store:
                    del self._objects[kind][ns]
            else:
                store[name] = obj
                if kind == "pods":
                    self._index_pod(ns, name, obj)
                if kind == "services":
                    self._index_service(ns, name, obj)
            if old == (None if event == "DELETED" else obj):
                return
            nodes_changed = self._reindex_nodes() if kind == "nodes" else set()
        if kind == "nodes":
            for namespace in sorted(nodes_changed):
                self._notify(kind, namespace, None)
            return
        self._notify(kind, ns, name)

    def record_write(self, kind: str, obj: Obj, based_on_resource_version: str) -> bool:
        """Store our own write's result (the API's response) now, without notifying: the writer
        knows what it wrote, and the watch echo of it is then no change. Only if the stored
        object is still the one the write was based on (a newer event must not be undone);
        False when it was not stored."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        with self._lock:
            store = self._objects[kind].get(ns)
            old = store.get(name) if store is not None else None
            if store is None or old is None or old["metadata"].get("resourceVersion") != based_on_resource_version:
                return False
            if kind == "pods":
                self._unindex_pod(ns, name, old)
                self._index_pod(ns, name, obj)
            if kind == "services":
                self._unindex_service(ns, name, old)
                self._index_service(ns, name, obj)
            store[name] = obj
            return True

    def _notify(self, kind: str, namespace: str, name: str | None) -> None:
        for listener in self._listeners:
            listener(kind, namespace, name)

    def _index_pod(self, ns: str, name: str, pod: Obj) -> None:
        for kv in (pod["metadata"].get("labels") or {}).items():
            self._pod_labels[ns][kv].add(name)

    def _unindex_pod(self, ns: str, name: str, pod: Obj) -> None:
        index = self._pod_labels.get(ns)
        if index is None:
            return
        for kv in (pod["metadata"].get("labels") or {}).items():
            names = index.get(kv)
            if names is not None:
                names.discard(name)
                if not names:
                    del index[kv]

    def _index_service(self, ns: str, name: str, service: Obj) -> None:
        for port in allocated_node_ports(service):
            self._node_ports[port].add((ns, name))

    def _unindex_service(self, ns: str, name: str, service: Obj) -> None:
        for port in allocated_node_ports(service):
            holders = self._node_ports.get(port)
            if holders is not None:
                holders.discard((ns, name))
                if not holders:
                    del self._node_ports[port]

    # --- ClusterView -------------------------------------------------------------------

    def services_in(self, namespace: str) -> Sequence[Obj]:
        with self._lock:
            return list(self._objects["services"].get(namespace, {}).values())

    def pods_in(self, namespace: str) -> Sequence[Obj]:
        with self._lock:
            return list(self._objects["pods"].get(namespace, {}).values())

    def policies_in(self, namespace: str) -> Sequence[Obj]:
        with self._lock:
            return list(self._objects["networkpolicies"].get(namespace, {}).values())

    def pods_matching(self, namespace: str, selector: Mapping[str, Any]) -> Sequence[Obj]:
        match_labels: Mapping[str, str] = selector.get("matchLabels") or {}
        with self._lock:
            pods = self._objects["pods"].get(namespace, {})
            if not match_labels:
                selected = list(pods.values())
            else:
                index = self._pod_labels.get(namespace, {})
                postings = sorted((index.get(kv, set()) for kv in match_labels.items()), key=len)
                candidates = postings[0].intersection(*postings[1:]) if len(postings) > 1 else postings[0]
                selected = [pods[n] for n in sorted(candidates)]
        if not selector.get("matchExpressions"):
            return selected  # the label index answered matchLabels exactly
        return [p for p in selected if selector_matches(selector, p["metadata"].get("labels") or {})]

    def node_port_in_use(self, port: int) -> bool:
        with self._lock:
            return bool(self._node_ports.get(port))

    def node_addresses(self) -> frozenset[str]:
        with self._lock:
            return self._node_addresses

    # --- introspection -----------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {k: sum(len(v) for v in self._objects[k].values()) for k in KINDS}

    def namespaces(self) -> list[str]:
        with self._lock:
            # Nodes are cluster-scoped (kept under ""): not a namespace.
            return sorted(set().union(*(self._objects[k].keys() for k in KINDS if k != "nodes")))

    def policy(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects["networkpolicies"].get(namespace, {}).get(name)
