"""Benchmark 5: `kubectl apply` of a policy to its rule present in the node netns, 1,000 policies enforced (I/O)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.stats import Figure, JsonScalar, Target, not_measured, summarize
from tests.components import EnforcerProcess, WebhookServer, install_manifests, remove_webhooks
from tests.controlplane.harness import ControlPlane, running_control_plane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.netns import Node, make_node

logger = logging.getLogger(__name__)

NAME = "end-to-end"
ENFORCED = 1_000
NAMESPACES = 10
# The harness's Service CIDR is a documentation /24 (~250 ClusterIPs): 100 Services with 10 NodePorts each.
PORTS_PER_SERVICE = 10
SAMPLES = 20
FIRST_PORT = 30000
ALLOWED = "198.51.100.0/24"
BACKEND = "legacy"
MEDIAN_TARGET = Target("median", "<=", 300.0, "median <= 300 ms")
P99_TARGET = Target("p99", "<=", 1000.0, "p99 <= 1 s")
NOTES = (
    "The real stack: local etcd + kube-apiserver (tests/controlplane/harness.py), `manifests/` applied and "
    "certificates installed by the certs tool (tests/components.py `install_manifests`), the webhook under "
    "gunicorn + TLS with list+watch and the reconciler (`WebhookServer`), and the enforcer process in a node "
    f"network namespace (`EnforcerProcess`, {BACKEND} backend, default debounce). First "
    f"{ENFORCED // PORTS_PER_SERVICE} NodePort Services with {PORTS_PER_SERVICE} ports each (the harness's "
    f"Service CIDR holds ~250 ClusterIPs), their Pods and {ENFORCED:,} policies (one per Service port, in "
    f"{NAMESPACES} namespaces) are created and the benchmark waits until all {ENFORCED:,} NodePorts are in "
    "the node's ipset. Then, {SAMPLES} times, one more policy is "
    "applied with `kubectl apply` (its Service and Pod exist already) and the time from starting kubectl to "
    "the allowed (prefix, port) member being present in the node namespace's ipset is measured by a poller "
    "inside the namespace (`ipset test` in a loop; both sides read CLOCK_MONOTONIC). kubectl's own start-up "
    "is included, as a user would see it."
)

_POLLER = r"""
import subprocess, sys, time
for line in sys.stdin:
    set_name, member, timeout = line.split()
    deadline = time.monotonic() + float(timeout)
    found = 0.0
    while time.monotonic() < deadline:
        if subprocess.run(["ipset", "test", set_name, member], capture_output=True).returncode == 0:
            found = time.monotonic()
            break
    print(found, flush=True)
"""


def expected_figures() -> list[Figure]:
    return [
        not_measured(NAME, f"kubectl apply -> rule in the node ({ENFORCED:,} enforced)", "ms", MEDIAN_TARGET, ""),
        not_measured(NAME, "kubectl apply -> rule in the node, p99", "ms", P99_TARGET, ""),
    ]


def _app(k: int, first_port: int, ports: int) -> list[dict[str, Any]]:
    """Service svc-k with `ports` NodePorts from first_port (targetPorts 8000...) and its Pod."""
    labels = {"app": f"app-{k}"}
    container_ports = [{"name": f"p{j}", "containerPort": 8000 + j, "protocol": "TCP"} for j in range(ports)]
    service_ports = [
        {"name": f"p{j}", "port": 80 + j, "targetPort": 8000 + j, "nodePort": first_port + j} for j in range(ports)
    ]
    return [pod(f"pod-{k}", labels, container_ports), nodeport_service(f"svc-{k}", labels, service_ports)]


def _policy(k: int, j: int) -> dict[str, Any]:
    """Allows ALLOWED to port j of svc-k's pods (so exactly that NodePort gets ALLOWED as its source)."""
    rule = {"from": [{"ipBlock": {"cidr": ALLOWED}}], "ports": [{"port": 8000 + j}]}
    return policy(f"pol-{k}-{j}", {"matchLabels": {"app": f"app-{k}"}}, [rule], policyTypes=["Ingress"])


def _measure_service(sample: int) -> int:
    return ENFORCED // PORTS_PER_SERVICE + sample


CREATE_ATTEMPTS = 5


def _create_all(plane: ControlPlane, objects: dict[str, list[dict[str, Any]]]) -> int:
    """Create the objects, one thread per namespace (kubectl is its own process); returns how many
    creations the webhooks denied and were retried.

    When policies selecting the same pods are created back to back, the validating webhook can see a
    cluster that changed since the mutating webhook ran (the previous policy arrived in its cache) and
    deny with "does not match ... retry": those are retried with `kubectl apply`, as a user would.
    """
    errors: list[str] = []
    denied: list[int] = []

    def create(namespace: str, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), 250):
            chunk = as_list(*items[start : start + 250])
            for attempt in range(CREATE_ATTEMPTS):
                verb = "create" if attempt == 0 else "apply"
                result = plane.kubectl(verb, "-n", namespace, "-f", "-", input=chunk, check=False, timeout=600)
                if result.returncode == 0:
                    break
                # Admission warnings (expected here: a port without an allowing rule) are not the error.
                lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("Warning:")]
                retryable = [x for x in lines if "does not match what nodeport-guard computes" in x]
                denied.append(len(retryable))
                if len(retryable) != len(lines) and not (attempt and all("AlreadyExists" in x for x in lines)):
                    errors.append(f"{namespace}: {' | '.join(lines)[:600]}")
                    return
            else:
                errors.append(f"{namespace}: still denied after {CREATE_ATTEMPTS} attempts")
                return

    threads = [threading.Thread(target=create, args=item) for item in sorted(objects.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"creating the benchmark objects failed: {errors[0]}")
    return sum(denied)


def _count_ports(node: Node) -> int:
    out = node.run(["ipset", "save", "npg-4-tcp"], check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("add "))


def _wait_ports(node: Node, count: int, enforcer: EnforcerProcess, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _count_ports(node) >= count:
            return time.monotonic() - start
        if enforcer.process is not None and enforcer.process.poll() is not None:
            raise RuntimeError(f"the enforcer exited:\n{enforcer.log_tail()}")
        time.sleep(1.0)
    raise RuntimeError(
        f"only {_count_ports(node)} of {count} NodePorts enforced after {timeout:.0f} s:\n{enforcer.log_tail()}"
    )


def _measure(plane: ControlPlane, node: Node, namespace: str) -> tuple[list[float], list[float]]:
    """(apply -> rule present, apply -> kubectl returned) per sample, in ms."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node.node_ns, sys.executable, "-c", _POLLER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    node._procs.append(proc)  # closed (killed) with the node
    assert proc.stdin is not None and proc.stdout is not None
    latencies = []
    kubectl_done = []
    for sample in range(SAMPLES):
        k = _measure_service(sample)
        member = f"{ALLOWED},tcp:{FIRST_PORT + ENFORCED + sample}"
        manifest = json.dumps(_policy(k, 0))
        start = time.monotonic()
        kubectl = subprocess.Popen(
            [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig), "apply", "-n", namespace, "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.stdin.write(f"npg-4-allow {member} 30\n")
        proc.stdin.flush()
        _, err = kubectl.communicate(manifest, timeout=60)
        kubectl_done.append((time.monotonic() - start) * 1000)
        if kubectl.returncode != 0:
            raise RuntimeError(f"kubectl apply of pol-{k}-0 failed: {err.strip()[:300]}")
        found = float(proc.stdout.readline())
        if not found:
            raise RuntimeError(f"pol-{k}-0: {member} did not appear in the node's ipset within 30 s")
        latencies.append((found - start) * 1000)
        time.sleep(0.3)  # let the enforcer's debounce and the reconciler settle between samples
    return latencies, kubectl_done


def run(workdir: Path) -> list[Figure]:
    namespaces = [f"bench-{n}" for n in range(NAMESPACES)]
    apps: dict[str, list[dict[str, Any]]] = {ns: [] for ns in namespaces}
    policies: dict[str, list[dict[str, Any]]] = {ns: [] for ns in namespaces}
    for k in range(ENFORCED // PORTS_PER_SERVICE):
        ns = namespaces[k % NAMESPACES]
        apps[ns] += _app(k, FIRST_PORT + k * PORTS_PER_SERVICE, PORTS_PER_SERVICE)
        policies[ns] += [_policy(k, j) for j in range(PORTS_PER_SERVICE)]
    measure_ns = "bench-new"
    # One single-port Service per sample, unprotected until its sample's policy is applied.
    measure_apps = [o for s in range(SAMPLES) for o in _app(_measure_service(s), FIRST_PORT + ENFORCED + s, 1)]
    with running_control_plane() as plane:
        install = install_manifests(plane, workdir / "install")
        webhook = WebhookServer(plane, install, workdir / "webhook.log")
        try:
            webhook.start()
            for ns in [*namespaces, measure_ns]:
                plane.kubectl("create", "namespace", ns)
            started = time.monotonic()
            _create_all(plane, apps)
            _create_all(plane, {measure_ns: measure_apps})
            retried = _create_all(plane, policies)
            created = time.monotonic() - started
            with make_node(lock_path=str(workdir / "xtables.lock")) as node:
                enforcer = EnforcerProcess(
                    plane, install, node.node_ns, workdir / "enforcer.log", workdir, backend=BACKEND
                )
                try:
                    enforce_started = time.monotonic()
                    enforcer.start()
                    enforcer.wait_ready(timeout=120)
                    _wait_ports(node, ENFORCED, enforcer, timeout=300)
                    initial = time.monotonic() - enforce_started
                    latencies, kubectl_done = _measure(plane, node, measure_ns)
                    if _count_ports(node) != ENFORCED + SAMPLES:
                        raise RuntimeError(
                            f"{_count_ports(node)} NodePorts enforced at the end, expected {ENFORCED + SAMPLES}"
                        )
                finally:
                    enforcer.stop()
                    enforcer.cleanup_node()
        finally:
            remove_webhooks(plane)
            webhook.stop()
    inputs: dict[str, JsonScalar] = {
        "enforced_policies": ENFORCED,
        "enforced_nodeports": ENFORCED,
        "creations_denied_and_retried": retried,
        "namespaces": NAMESPACES,
        "backend": BACKEND,
        "samples": SAMPLES,
        "create_seconds": round(created, 1),
        "initial_enforce_seconds": round(initial, 1),
    }
    return [
        Figure(
            NAME,
            f"kubectl apply -> rule in the node ({ENFORCED:,} enforced)",
            "ms",
            summarize(latencies),
            MEDIAN_TARGET,
            inputs=inputs,
        ),
        Figure(NAME, "kubectl apply -> rule in the node, p99", "ms", summarize(latencies), P99_TARGET, inputs=inputs),
        Figure(
            NAME,
            "kubectl apply -> kubectl returned (part of the above)",
            "ms",
            summarize(kubectl_done),
            None,
            inputs=inputs,
            note="kubectl start-up, apiserver and both admission webhooks; the rest is the enforcer's path",
        ),
    ]
