"""`python -m localcluster`: prerequisites are named, and `up` after a killed `up` works and `down` leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from localcluster.plan import build_plan
from localcluster.state import cgroup_dirs, cluster_dir
from tests.cluster.helpers import REPO


def _cli(*args: str, env: dict[str, str] | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "localcluster", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, cwd=REPO, env=env or dict(os.environ), capture_output=True, text=True, timeout=300,
                          check=False)


def test_missing_prerequisites_are_named_with_a_non_zero_exit() -> None:
    not_root = _cli("up", "--name", "tnoroot", "--no-image", user="65534")
    assert not_root.returncode == 1
    assert "needs root" in not_root.stderr
    no_tools = _cli("up", "--name", "tnotools", "--no-image", env={**os.environ, "PATH": "/nonexistent"})
    assert no_tools.returncode == 1
    assert "missing commands" in no_tools.stderr and "make install" in no_tools.stderr
    assert not cluster_dir("tnoroot").exists() and not cluster_dir("tnotools").exists()


def _leftovers(name: str) -> list[str]:
    plan = build_plan(name)
    found = [ns for ns in plan.netns if Path("/run/netns", ns).exists()]
    found += [str(d) for d in cgroup_dirs(plan.prefix)]
    if cluster_dir(name).exists():
        found.append(str(cluster_dir(name)))
    return found


def test_up_after_a_killed_up_works_and_down_removes_everything() -> None:
    name = "tkill" + os.urandom(1).hex()
    proc = subprocess.Popen([sys.executable, "-m", "localcluster", "up", "--name", name, "--no-image"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # kill it while the nodes start: processes, mounts and cgroups exist
            if "starting containerd, kubelet and kube-proxy" in line:
                time.sleep(1)  # containerd and kubelets are starting; the nodes are not Ready yet
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _leftovers(name), "the killed up left nothing to clean: the test did not kill it mid-way"
        again = _cli("up", "--name", name, "--no-image")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "left behind" in again.stdout
        status = _cli("status", "--name", name)
        assert status.returncode == 0 and "node1" in status.stdout and "Ready" in status.stdout, status.stdout
        state = json.loads((cluster_dir(name) / "state.json").read_text())
        assert {p["what"] for p in state["procs"]} >= {"kube-apiserver", "node1 kubelet", "node2 kube-proxy"}
    finally:
        down = _cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _leftovers(name) == []
