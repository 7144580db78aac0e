"""What the cluster tier does to the local cluster: make deploy/undeploy, backends, policies, probes (I/O)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localcluster.backends import NAMESPACE, SERVICES, render_backends
from localcluster.cluster import Cluster, down, up
from localcluster.image import ensure_product_image
from localcluster.probe import Proto, Target, probe_many
from localcluster.state import is_stale, list_clusters, teardown
from tests.machine import CLUSTER_RAN

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("v4", "v6")
PROTOS: tuple[Proto, ...] = ("tcp", "udp")


@dataclass
class Deployment:
    certs_dir: Path
    output: str
    seconds: float
    undeployed: bool = False
    log: list[str] = field(default_factory=list)


@contextlib.contextmanager
def own_cluster(prefix: str, config: pytest.Config) -> Iterator[Cluster]:
    """A fresh two-node cluster for one tier, named `prefix` + random hex, removed at the end.

    Clusters of the same prefix whose owner is gone (a killed earlier session) are swept first;
    the session's stash records that a cluster ran, for the machine comparison in tests/cluster_after.
    """
    for name in list_clusters():
        if name.startswith(prefix) and is_stale(name):
            teardown(name)
    name = prefix + secrets.token_hex(3)
    cluster = up(name, images=[ensure_product_image()], owner_pid=os.getpid())
    config.stash[CLUSTER_RAN] = True
    try:
        yield cluster
    finally:
        problems = down(name)
        assert not problems, problems


@contextlib.contextmanager
def deployed_on(cluster: Cluster) -> Iterator[Deployment]:
    """`make deploy` exactly as the README says; `make undeploy` at the end unless a test already did."""
    deployment = deploy(cluster)
    try:
        yield deployment
    finally:
        if not deployment.undeployed:
            undeploy(cluster)
        shutil.rmtree(deployment.certs_dir, ignore_errors=True)


def user_env(cluster: Cluster) -> dict[str, str]:
    """What the README has a user do: `eval "$(python -m localcluster env)"`, the venv first on PATH."""
    env = {**os.environ, **cluster.env()}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def make(cluster: Cluster, target: str, timeout: float = 600, **variables: str) -> subprocess.CompletedProcess[str]:
    argv = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(argv, cwd=REPO, env=user_env(cluster), capture_output=True, text=True, timeout=timeout,
                          check=False)


def deploy(cluster: Cluster) -> Deployment:
    certs = Path(tempfile.mkdtemp(prefix="npg-deploy-certs-"))
    started = time.monotonic()
    proc = make(cluster, "deploy", CERTS_DIR=str(certs))
    if proc.returncode != 0:
        raise AssertionError(f"make deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return Deployment(certs, proc.stdout + proc.stderr, time.monotonic() - started)


def undeploy(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return make(cluster, "undeploy")


def apply_backends(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=render_backends())
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "daemonset/echo", "--timeout=120s", timeout=150)


def apply_policy(cluster: Cluster, name: str, ingress: list[dict[str, Any]] | None) -> subprocess.CompletedProcess[str]:
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Ingress"]}
    if ingress is not None:
        spec["ingress"] = ingress
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
    return cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False)


def delete_policies(cluster: Cluster) -> None:
    cluster.kubectl("-n", NAMESPACE, "delete", "networkpolicies", "--all", "--wait=true")


def node_address(cluster: Cluster, node: str, family: str) -> str:
    plan = cluster.plan.node(node)
    return plan.v4 if family == "v4" else plan.v6


def matrix(cluster: Cluster, ports: Iterable[int] | None = None) -> list[tuple[str, int, Proto, str]]:
    """Every (node, nodePort, protocol, family) the backends expose."""
    ports = list(ports) if ports is not None else [s.node_port for s in SERVICES]
    return [(n.name, p, proto, fam) for n in cluster.plan.nodes for p in ports for proto in PROTOS for fam in FAMILIES]


def probe_matrix(cluster: Cluster, client: str, cases: list[tuple[str, int, Proto, str]],
                 timeout: float = 1.0) -> dict[tuple[str, int, Proto, str], str]:
    targets = [Target(node_address(cluster, n, f), p, proto, timeout) for n, p, proto, f in cases]
    results = probe_many(cluster.plan.client(client).netns, targets)
    return dict(zip(cases, results, strict=True))


def eventually(check: Callable[[], Any], timeout: float = 30, interval: float = 0.5) -> Any:
    """Retry `check` (which raises AssertionError until it holds) until it passes or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def expect(cluster: Cluster, client: str, cases: list[tuple[str, int, Proto, str]], answered: bool,
           timeout: float = 30) -> dict[tuple[str, int, Proto, str], str]:
    """Probe until every case is answered (or every case times out), on both nodes at once."""
    def check() -> dict[tuple[str, int, Proto, str], str]:
        results = probe_matrix(cluster, client, cases)
        wrong = {k: v for k, v in results.items() if v.startswith("answer:") != answered}
        assert not wrong, f"{client}: expected {'answers' if answered else 'timeouts'}, got {wrong}"
        return results

    result: dict[tuple[str, int, Proto, str], str] = eventually(check, timeout)
    return result


def our_dataplane(cluster: Cluster, node: str) -> list[str]:
    """Every line on `node` naming one of our chains, rules or sets, over both iptables backends and nft."""
    lines = []
    for argv in (["iptables-legacy-save"], ["ip6tables-legacy-save"], ["iptables-nft-save"], ["ip6tables-nft-save"],
                 ["nft", "list", "ruleset"], ["ipset", "list", "-n"]):
        out = cluster.on_node(node, argv, check=False).stdout
        lines += [f"{argv[0]}: {line}" for line in out.splitlines() if "npg" in line.lower()]
    return lines


def enforcer_pids(cluster: Cluster, node: str) -> list[int]:
    """The PIDs of the enforcer processes of `node`: host network, so their network namespace is the node's."""
    plan = next(n for n in cluster.plan.nodes if n.name == node)
    node_ns = os.stat(f"/run/netns/{plan.netns}").st_ino
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            same_ns = os.stat(entry / "ns" / "net").st_ino == node_ns
        except OSError:
            continue  # gone meanwhile
        if same_ns and any(a.endswith(b"nodeport-guard-enforcer") for a in argv) and b"run" in argv:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def paused_enforcer(cluster: Cluster, node: str) -> Iterator[None]:
    """Holds `node`'s enforcer still (SIGSTOP to its own PIDs, SIGCONT on the way out), so a test can look at
    a transition ("not yet in force there") without racing the enforcer. Keep it short: the kubelet's
    liveness probe (10 s period, 3 failures) restarts a container held for about 30 s."""
    pids = enforcer_pids(cluster, node)
    assert pids, f"no enforcer process found on {node}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


CANARY_NODEPORT = 32767  # manifests/canary/: protected on every node while nodeport-guard is deployed


def protected_nodeports(cluster: Cluster, node: str) -> set[int]:
    """The NodePorts in our protected-port sets on `node` (both families, every protocol), canary included."""
    from contract.annotation import PROTOCOLS
    from enforcer.sets import port_set_name

    names = {port_set_name(4, p) for p in PROTOCOLS} | {port_set_name(6, p) for p in PROTOCOLS}
    ports = set()
    for line in cluster.on_node(node, ["ipset", "save"], check=False).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "add" and parts[1] in names:
            ports.add(int(parts[2].rsplit(":", 1)[-1]))
    return ports
