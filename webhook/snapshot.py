"""An in-memory `ClusterView` built from lists of API objects, for tests and benchmarks (pure)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhook.doors import node_address_set
from webhook.objects import compile_selector
from webhook.services import allocated_node_ports

logger = logging.getLogger(__name__)

KubeObject = dict[str, Any]


def _namespace_of(obj: Mapping[str, Any], default: str) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return namespace if isinstance(namespace, str) and namespace else default


def _labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


def _by_namespace(objs: Iterable[KubeObject], default: str) -> dict[str, list[KubeObject]]:
    out: dict[str, list[KubeObject]] = {}
    for obj in objs:
        out.setdefault(_namespace_of(obj, default), []).append(obj)
    return out


class StaticClusterView:
    """An immutable snapshot built from lists of API dicts, indexed by namespace and by pod label.

    Objects without `metadata.namespace` belong to `default_namespace`. The indexes are built
    once in the constructor and never change afterwards.
    """

    __slots__ = ("_label_index", "_node_addresses", "_node_ports", "_pods", "_policies", "_services")

    def __init__(
        self,
        services: Iterable[KubeObject] = (),
        pods: Iterable[KubeObject] = (),
        policies: Iterable[KubeObject] = (),
        default_namespace: str = "default",
        nodes: Iterable[KubeObject] = (),
    ) -> None:
        self._node_addresses = node_address_set(list(nodes))
        self._services = _by_namespace(services, default_namespace)
        self._pods = _by_namespace(pods, default_namespace)
        self._policies = _by_namespace(policies, default_namespace)
        self._node_ports = frozenset(p for ss in self._services.values() for s in ss for p in allocated_node_ports(s))
        # (namespace, key, value) -> pods carrying that label, in namespace order.
        self._label_index: dict[tuple[str, str, str], list[KubeObject]] = {}
        for namespace, ns_pods in self._pods.items():
            for pod in ns_pods:
                for key, value in _labels_of(pod).items():
                    self._label_index.setdefault((namespace, key, value), []).append(pod)

    def services_in(self, namespace: str) -> Sequence[KubeObject]:
        return self._services.get(namespace, ())

    def pods_in(self, namespace: str) -> Sequence[KubeObject]:
        return self._pods.get(namespace, ())

    def policies_in(self, namespace: str) -> Sequence[KubeObject]:
        return self._policies.get(namespace, ())

    def node_port_in_use(self, port: int) -> bool:
        return port in self._node_ports

    def node_addresses(self) -> frozenset[str]:
        return self._node_addresses

    def pods_matching(self, namespace: str, selector: KubeObject) -> Sequence[KubeObject]:
        match_labels = selector.get("matchLabels") or {}
        if match_labels and not selector.get("matchExpressions") and isinstance(match_labels, dict):
            # Fast path for Service-style selectors: one posting list, plain label comparisons.
            items = list(match_labels.items())
            postings = [self._label_index.get((namespace, k, v), []) for k, v in items]
            smallest = min(postings, key=len)
            if len(items) == 1:
                return list(smallest)
            return [p for p in smallest if all(_labels_of(p).get(k) == v for k, v in items)]
        compiled = compile_selector(selector, "selector")
        if match_labels:
            # Start from the smallest posting list of the required labels instead of the namespace.
            candidates = min(
                (self._label_index.get((namespace, k, v), []) for k, v in match_labels.items()),
                key=len,
            )
        else:
            candidates = self._pods.get(namespace, [])
        return [pod for pod in candidates if compiled.matches(_labels_of(pod))]
