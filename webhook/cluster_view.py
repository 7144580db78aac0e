"""The read-only cluster view the webhook core resolves against: the cache, or a static one in tests (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

KubeObject = dict[str, Any]


class ClusterView(Protocol):
    """What the core needs from a snapshot of Services, Pods and NetworkPolicies."""

    def services_in(self, namespace: str) -> Sequence[KubeObject]: ...

    def pods_in(self, namespace: str) -> Sequence[KubeObject]: ...

    def policies_in(self, namespace: str) -> Sequence[KubeObject]: ...

    def pods_matching(self, namespace: str, selector: KubeObject) -> Sequence[KubeObject]:
        """Pods of `namespace` matched by a LabelSelector dict (matchLabels/matchExpressions)."""
        ...

    def node_port_in_use(self, port: int) -> bool:
        """Whether any Service of any namespace holds NodePort `port` (an O(1) index lookup)."""
        ...

    def node_addresses(self) -> frozenset[str]:
        """Every Node's addresses (canonical text): never a door (webhook/doors.py)."""
        ...
