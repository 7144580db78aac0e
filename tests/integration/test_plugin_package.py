"""The plugin on its own: the standalone wheel installed into a fresh venv (no repository on its
path, none of the servers' dependencies), found by the real kubectl as `kubectl nodeport-guard`,
explaining a policy the real webhook annotated through the real apiserver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controlplane.harness import ControlPlane
from tests.integration.test_plugin import protected  # noqa: F401  # the fixture

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("plugin")
    built = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "kubectl-plugin" / "build_wheel.py"), "--out", str(work / "dist")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    wheel = Path(built.stdout.strip().splitlines()[-1])
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    return venv


def test_the_wheel_carries_only_the_plugin_and_its_dependencies(plugin_venv: Path) -> None:
    python = str(plugin_venv / "bin" / "python")
    for absent in ("webhook", "enforcer", "flask", "gunicorn", "iptc", "prometheus_client"):
        found = subprocess.run([python, "-c", f"import {absent}"], cwd="/", capture_output=True, check=False)
        assert found.returncode != 0, f"{absent} is importable from the plugin's venv"
    assert (plugin_venv / "bin" / "kubectl-nodeport_guard").exists()


def test_kubectl_nodeport_guard_explain_from_the_fresh_venv(
    control_plane: ControlPlane,
    namespace: str,
    protected: int,  # noqa: F811
    plugin_venv: Path,
) -> None:
    # Only the fresh venv's bin on PATH (and the system's), never the project's venv; cwd outside the repo.
    env = {
        "PATH": f"{plugin_venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        "KUBECONFIG": str(control_plane.kubeconfig),
        "HOME": os.environ.get("HOME", "/root"),
    }
    result = subprocess.run(
        [str(control_plane.binaries.kubectl), "nodeport-guard", "explain", "-n", namespace, "allow-doc"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"NetworkPolicy {namespace}/allow-doc: verified" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(str(protected)))
    assert "198.51.100.0/24 except 198.51.100.7/32" in row
