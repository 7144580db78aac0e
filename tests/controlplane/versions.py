"""Pinned versions of the control-plane binaries: they live in localcluster.versions (pure data)."""

from localcluster.versions import ETCD_VERSION, KUBERNETES_GO_LINE, KUBERNETES_VERSION

__all__ = ["ETCD_VERSION", "KUBERNETES_GO_LINE", "KUBERNETES_VERSION"]
