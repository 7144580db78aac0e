"""Pinned versions of the Kubernetes binaries and etcd, and the product image's name (pure data)."""

from __future__ import annotations

# Kubernetes 1.37 matches the `kubernetes` Python client 37.x pinned in pyproject.toml.
KUBERNETES_VERSION = "v1.37.2"
# Go line of that release's go.mod; the wrapper module keeps it (see docs/controlplane.md).
KUBERNETES_GO_LINE = "1.26.0"
ETCD_VERSION = "v3.6.16"
# What `docker build -t nodeport-guard:0.1.0 .` makes (README) and what the manifests run.
IMAGE_NAME = "nodeport-guard:0.1.0"
# helm 4.3 is built against client-go v0.37.2, the same minor as the cluster (localcluster/tools_build.py).
HELM_VERSION = "v4.3.2"
