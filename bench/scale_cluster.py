"""Scale curve on the real apiserver: time-to-true of one change vs Services cluster-wide (100 .. 10,000) (I/O).

Issue 9's other bound: annotations true within 2 s of a policy, Service or Pod change with 10,000
Services in the cluster. The stack of bench/scale_reconciler.py (local etcd + kube-apiserver, the
webhook under gunicorn + TLS with list+watch and its reconciler). The cluster grows in namespaces of
the same shape; each change is made in the first namespace, whose size stays the same, so the curve
shows what the rest of the cluster costs a change (nothing, if the per-change work is per namespace).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.stats import Figure, JsonScalar, Target, not_measured, summarize
from tests.components import Installation, WebhookServer, install_manifests, remove_webhooks
from tests.controlplane.harness import ControlPlane, running_control_plane
from tests.policy_watch import PolicyRecorder, desired_annotations, recording, wait_quiet, wait_true

logger = logging.getLogger(__name__)

NAME = "scale-cluster"
# Per namespace: 100 Services, of which 20 NodePort (the default NodePort range holds 2,768 ports:
# 20 x 100 namespaces = 2,000 fit) and 80 ClusterIP; 2 pods behind each NodePort Service (the
# ClusterIP ones select the same pods); 10 policies selecting every pod, each allowing its own host.
SERVICES_PER_NAMESPACE = 100
NODEPORT_SERVICES = 20
PODS_PER_SERVICE = 2
POLICIES_PER_NAMESPACE = 10
NAMESPACES = (1, 10, 100)  # 100, 1,000 and 10,000 Services cluster-wide
REPEAT = 5
CREATE_PROCESSES = 4
TRUE_TIMEOUT = 60.0
# A resync pass every few seconds instead of 60, so changes also land while one runs.
RESYNC_SECONDS = 5
BOUND = Target("median", "<=", 2000.0, "median <= 2 s (the reconciler's bound)")
CHANGES = (
    "change one policy",
    "add a NodePort Service",
    "delete a NodePort Service",
    "add the first pod behind a NodePort Service",
    "delete that pod",
)
NOTES = (
    "The real stack: local etcd + kube-apiserver, `manifests/` applied and certificates installed by the certs "
    "tool, the webhook under gunicorn + TLS with list+watch and the leader reconciler, no node "
    f"(`NPG_RESYNC_SECONDS={RESYNC_SECONDS}`, so that changes also land during a full resync pass). The cluster "
    f"grows by namespaces of one shape: {SERVICES_PER_NAMESPACE} Services ({NODEPORT_SERVICES} NodePort, the rest "
    f"ClusterIP: the apiserver's default NodePort range holds only 2,768 ports), {PODS_PER_SERVICE} pods behind "
    f"each NodePort Service (the ClusterIP Services select the same pods), {POLICIES_PER_NAMESPACE} policies "
    "selecting every pod, each allowing its own IPv6 host; every Service is IPv6 single-stack (the test "
    "apiserver's IPv4 Service range is a /24). At 1, 10 and 100 namespaces (100, 1,000 and 10,000 Services), "
    f"each change is made {REPEAT} times in the first namespace: change one policy's ipBlock, add a NodePort "
    "Service selecting existing pods, delete it, add the first pod behind a NodePort Service that had none "
    "(made before, untimed: every policy now names its NodePort), delete that pod. **Time to true**: "
    "measured since just before the API call until the first instant every stored policy of that namespace "
    "carries exactly what the pure core computes (tests/policy_watch.py). **Writes**: the reconciler's counter "
    "on /metrics. Only a benchmark, not also an integration test: populating 10,000 Services through the "
    "apiserver took 510 s on this machine, far above the 2 minutes a test may take."
)


def _label(services: int) -> str:
    return f"{services:,} Services cluster-wide"


def expected_figures() -> list[Figure]:
    out = []
    for namespaces in NAMESPACES:
        services = namespaces * SERVICES_PER_NAMESPACE
        for change in CHANGES:
            out.append(not_measured(NAME, f"time to true: {change}, {_label(services)}", "ms", BOUND, ""))
            out.append(not_measured(NAME, f"writes: {change}, {_label(services)}", "writes", None, ""))
    return out


def _host(namespace_index: int, index: int) -> str:
    return f"2001:db8:{namespace_index:x}::{index + 1:x}"


def _service(index: int, node_port: bool, selects: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{index}"},
        "spec": {
            "type": "NodePort" if node_port else "ClusterIP",
            "ipFamilyPolicy": "SingleStack",
            "ipFamilies": ["IPv6"],
            "selector": {"app": f"app-{selects}"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ]
        },
    }


def _policy(namespace_index: int, index: int, host: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"allow-{index}"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": f"{host or _host(namespace_index, index)}/128"}}]}],
        },
    }


def namespace_list(namespace_index: int) -> str:
    """One namespace's objects as a kubectl List: Services and pods first, then the policies (so
    each is admitted with its Services known, and the reconciler has nothing left to do)."""
    services = [_service(s, s < NODEPORT_SERVICES, s % NODEPORT_SERVICES) for s in range(SERVICES_PER_NAMESPACE)]
    pods = [
        _pod(f"pod-{a}-{r}", {"app": f"app-{a}"}) for a in range(NODEPORT_SERVICES) for r in range(PODS_PER_SERVICE)
    ]
    policies = [_policy(namespace_index, i) for i in range(POLICIES_PER_NAMESPACE)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [*services, *pods, *policies]})


def _namespace(index: int) -> str:
    return f"cluster-{index}"


def _populate(plane: ControlPlane, indexes: range) -> None:
    def one(index: int) -> None:
        ns = _namespace(index)
        plane.kubectl("create", "namespace", ns)
        plane.kubectl("create", "-n", ns, "-f", "-", input=namespace_list(index), timeout=600)

    with ThreadPoolExecutor(max_workers=CREATE_PROCESSES) as pool:
        list(pool.map(one, indexes))


class Changes:
    """The measured changes, all in the first namespace (its own size fixed)."""

    def __init__(self, plane: ControlPlane, install: Installation, webhook: WebhookServer) -> None:
        self.plane, self.install, self.webhook = plane, install, webhook
        self.namespace = _namespace(0)
        self.round = 0

    def measure(self, recorder: PolicyRecorder, change: Callable[[], Any]) -> tuple[int, float]:
        before = wait_quiet(self.webhook, quiet=0.5)
        since = time.monotonic()
        change()
        desired = desired_annotations(self.plane, self.namespace, self.install.signing_key)
        took = wait_true(recorder, desired, since, TRUE_TIMEOUT)
        after = wait_quiet(self.webhook, quiet=1.0, timeout=TRUE_TIMEOUT)
        return after - before, took

    def make(self) -> dict[str, Callable[[], Any]]:
        k, ns, plane = self.round, self.namespace, self.plane
        self.round += 1
        changed = _policy(0, k % POLICIES_PER_NAMESPACE, host=_host(0xFFF, k))
        service = json.dumps({**_service(0, True, k % NODEPORT_SERVICES), "metadata": {"name": f"extra-{k}"}})
        # A NodePort Service without pods, so its first pod is a change every policy sees (untimed).
        lonely = {**_service(0, True, 0), "metadata": {"name": f"lonely-{k}"}}
        lonely["spec"] = {**lonely["spec"], "selector": {"app": f"lonely-{k}"}}
        plane.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(lonely))
        pod = json.dumps(_pod(f"lonely-{k}", {"app": f"lonely-{k}"}))
        return {
            "change one policy": lambda: plane.kubectl(
                "patch",
                "networkpolicy",
                changed["metadata"]["name"],
                "-n",
                ns,
                "--type=merge",
                "-p",
                json.dumps({"spec": changed["spec"]}),
            ),
            "add a NodePort Service": lambda: plane.kubectl("create", "-n", ns, "-f", "-", input=service),
            "delete a NodePort Service": lambda: plane.kubectl("delete", "service", f"extra-{k}", "-n", ns),
            "add the first pod behind a NodePort Service": lambda: plane.kubectl(
                "create", "-n", ns, "-f", "-", input=pod
            ),
            "delete that pod": lambda: plane.kubectl(
                "delete", "pod", f"lonely-{k}", "-n", ns, "--grace-period=0", "--force"
            ),
        }


def _figures(services: int, results: dict[str, list[tuple[int, float]]]) -> list[Figure]:
    inputs: dict[str, JsonScalar] = {
        "services_cluster_wide": services,
        "nodeport_services_cluster_wide": services * NODEPORT_SERVICES // SERVICES_PER_NAMESPACE,
        "policies_cluster_wide": services // SERVICES_PER_NAMESPACE * POLICIES_PER_NAMESPACE,
        "repeats": REPEAT,
    }
    out = []
    for change in CHANGES:
        samples = results[change]
        out.append(
            Figure(
                NAME,
                f"time to true: {change}, {_label(services)}",
                "ms",
                summarize([t * 1000 for _, t in samples]),
                BOUND,
                inputs=inputs,
            )
        )
        out.append(
            Figure(
                NAME,
                f"writes: {change}, {_label(services)}",
                "writes",
                summarize([float(w) for w, _ in samples]),
                None,
                inputs=inputs,
            )
        )
    return out


def run(workdir: Path) -> list[Figure]:
    figures: list[Figure] = []
    with running_control_plane() as plane:
        install = install_manifests(plane, workdir / "install")
        webhook = WebhookServer(
            plane, install, workdir / "webhook.log", extra_env={"NPG_RESYNC_SECONDS": str(RESYNC_SECONDS)}
        )
        try:
            webhook.start()
            changes = Changes(plane, install, webhook)
            done = 0
            for namespaces in NAMESPACES:
                started = time.monotonic()
                _populate(plane, range(done, namespaces))
                done = namespaces
                services = namespaces * SERVICES_PER_NAMESPACE
                wait_quiet(webhook, quiet=2.0, timeout=600)
                print(f"    {_label(services)}: populated in {time.monotonic() - started:.0f} s", flush=True)
                results: dict[str, list[tuple[int, float]]] = {c: [] for c in CHANGES}
                with recording(plane, changes.namespace) as recorder:
                    for _ in range(REPEAT):
                        for change, make in changes.make().items():
                            results[change].append(changes.measure(recorder, make))
                            writes, took = results[change][-1]
                            print(
                                f"    {_label(services)} {change}: {writes} writes, true after {took:.2f} s", flush=True
                            )
                figures += _figures(services, results)
        finally:
            remove_webhooks(plane)
            webhook.stop()
    return figures
