"""The uninstall DaemonSet used by `make undeploy` is accepted by the real apiserver."""

from __future__ import annotations

from tests.components import REPO
from tests.controlplane.harness import ControlPlane


def test_cleanup_daemonset_dry_runs(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", str(REPO / "manifests/base/namespace.yaml"))
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-o", "name", "-f", str(REPO / "manifests/cleanup/daemonset.yaml")
    )
    assert result.stdout.strip() == "daemonset.apps/nodeport-guard-cleanup"
