"""A Service created or deleted under many policies, through the real apiserver, webhook and reconciler.

A Service change rewrites the annotation of every policy selecting its pods (their entries name its
NodePort), and only those: the reconciler's writes are O(policies selecting the Service's pods), not
O(policies in the namespace). Those writes skip our own webhooks (the configurations' matchConditions
exempt the webhook's ServiceAccount when it leaves the spec as it was); everybody else's writes,
and the ServiceAccount's own spec changes, are still admitted, and an annotation set by hand is still
refused or overwritten.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
import urllib.request
from typing import Any

import pytest

from contract.annotation import NODEPORTS_KEY, SIGNATURE_KEY
from tests.components import Installation, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy
from tests.policy_watch import Recorded, desired_annotations, recording, wait_quiet, wait_true

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
PORT = [{"port": 80, "targetPort": "http"}]
CREATE_THREADS = 4
BOUND_SECONDS = 2.0  # the reconciler's bound for a hand edit by the exempt identity to be repaired
ADMISSIONS = re.compile(r"^nodeport_guard_admission_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def _admissions(server: WebhookServer) -> int:
    """AdmissionReviews the webhook answered so far (both endpoints, any result)."""
    context = ssl.create_default_context(cafile=str(server.install.certs_dir / "ca.crt"))
    with urllib.request.urlopen(f"{server.url}/metrics", context=context, timeout=10) as response:  # noqa: S310
        return int(sum(float(v) for v in ADMISSIONS.findall(response.read().decode())))


def _host(index: int) -> str:
    return f"10.{index // 128 // 256}.{index // 128 % 256}.{index % 128 * 2 + 1}"


def _policy(index: int, app: str) -> dict[str, Any]:
    rule = {"from": [{"ipBlock": {"cidr": f"{_host(index)}/32"}}]}
    return policy(f"allow-{index}", {"matchLabels": {"app": app}}, [rule], policyTypes=["Ingress"])


def _create_policies(plane: ControlPlane, namespace: str, bodies: list[dict[str, Any]]) -> None:
    """Through the API from a few threads (each its own client): every create must succeed."""
    from kubernetes import client

    errors: list[str] = []

    def work(part: list[dict[str, Any]]) -> None:
        api = plane.api_client()
        networking = client.NetworkingV1Api(api)
        try:
            for body in part:
                try:
                    networking.create_namespaced_network_policy(namespace, body)  # type: ignore[arg-type]
                except Exception as exc:  # reported below
                    errors.append(f"{body['metadata']['name']}: {str(exc)[:300]}")
        finally:
            api.close()

    threads = [threading.Thread(target=work, args=(bodies[k::CREATE_THREADS],)) for k in range(CREATE_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} creations failed, first: {errors[0]}"


def _setup(plane: ControlPlane, namespace: str, selecting: int, others: int) -> None:
    """Pods of app-0 and app-1; `selecting` policies select app-0's pods, `others` app-1's."""
    pods = [pod(f"pod-{a}-{r}", {"app": f"app-{a}"}, HTTP) for a in range(2) for r in range(2)]
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*pods))
    bodies = [_policy(i, "app-0") for i in range(selecting)]
    bodies += [_policy(selecting + i, "app-1") for i in range(others)]
    _create_policies(plane, namespace, bodies)


def _service_change(
    plane: ControlPlane, namespace: str, installation: Installation, webhook: WebhookServer, create: bool
) -> tuple[int, int, set[str], float]:
    """(reconciler writes, AdmissionReviews, policies modified, seconds to true) of creating or deleting
    NodePort Service `new` selecting app-0's pods."""
    with recording(plane, namespace) as recorder:
        writes_before = wait_quiet(webhook, quiet=1.0)
        admissions_before = _admissions(webhook)
        since = time.monotonic()
        if create:
            service = nodeport_service("new", {"app": "app-0"}, PORT)
            plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service))
        else:
            plane.kubectl("delete", "service", "new", "-n", namespace)
        took = wait_true(recorder, desired_annotations(plane, namespace, installation.signing_key), since, 120)
        writes = wait_quiet(webhook, quiet=1.0) - writes_before
        modified = {ev.name for ev in recorder.events if ev.at >= since and ev.event == "MODIFIED"}
    return writes, _admissions(webhook) - admissions_before, modified, took


@pytest.mark.parametrize(("selecting", "others"), [(10, 5), (100, 50), (1_000, 100)])
def test_a_service_change_writes_once_per_policy_selecting_its_pods(
    control_plane: ControlPlane,
    namespace: str,
    installation: Installation,
    webhook: WebhookServer,
    selecting: int,
    others: int,
) -> None:
    _setup(control_plane, namespace, selecting, others)
    chosen = {f"allow-{i}" for i in range(selecting)}
    for create in (True, False):
        writes, admissions, modified, took = _service_change(control_plane, namespace, installation, webhook, create)
        print(
            f"\n{'create' if create else 'delete'} a NodePort Service under {selecting:,} selecting policies "
            f"(+{others} others): {writes} reconciler writes, true after {took:.2f} s "
            f"({writes / max(took, 1e-9):.0f} writes/s), {admissions} AdmissionReviews"
        )
        assert modified == chosen, "only the policies selecting the Service's pods change"
        assert writes == selecting  # one write per selecting policy: none twice, none of the others
        assert admissions == 0, "the reconciler's own writes went through our webhooks"


def test_only_the_reconcilers_annotation_writes_skip_our_webhooks(
    control_plane: ControlPlane, namespace: str, installation: Installation, webhook: WebhookServer
) -> None:
    plane = control_plane
    _setup(plane, namespace, 3, 0)
    plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(nodeport_service("svc", {"app": "app-0"}, PORT))
    )
    with recording(plane, namespace) as recorder:
        wait_true(recorder, desired_annotations(plane, namespace, installation.signing_key), time.monotonic(), 30)
    wait_quiet(webhook, quiet=1.0)

    def stored(name: str) -> dict[str, str]:
        annotations = plane.kubectl_json("get", "networkpolicy", name, "-n", namespace)["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k in (NODEPORTS_KEY, SIGNATURE_KEY)}

    true = stored("allow-0")
    assert set(true) == {NODEPORTS_KEY, SIGNATURE_KEY}
    true_of_2 = stored("allow-2")

    # A user's hand edit is refused by our mutating webhook, as before.
    before = _admissions(webhook)
    edit = plane.kubectl(
        "annotate", "networkpolicy", "allow-0", "-n", namespace, f"{NODEPORTS_KEY}=forged", "--overwrite", check=False
    )
    assert edit.returncode != 0 and "set or edited by hand" in edit.stderr
    # A user's removal is overwritten at admission: the stored annotation stays true.
    plane.kubectl("annotate", "networkpolicy", "allow-0", "-n", namespace, f"{NODEPORTS_KEY}-", f"{SIGNATURE_KEY}-")
    assert stored("allow-0") == true
    assert _admissions(webhook) - before >= 2

    # The webhook's own ServiceAccount changing a spec is still admitted (mutated on the way in).
    sa = installation.webhook_kubeconfig
    before = _admissions(webhook)
    spec = {"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.9.9.9/32"}}]}]}}
    plane.kubectl(
        "patch", "networkpolicy", "allow-1", "-n", namespace, "--type=merge", "-p", json.dumps(spec), kubeconfig=sa
    )
    assert _admissions(webhook) - before >= 2  # mutate and validate
    assert '"10.9.9.9/32"' in stored("allow-1")[NODEPORTS_KEY]

    # Its annotation-only writes skip both webhooks: a wrong one is stored, then repaired by the
    # reconciler within its bound (and the enforcers never trust it: it does not verify).
    before = _admissions(webhook)
    with recording(plane, namespace) as recorder:
        since = time.monotonic()
        plane.kubectl(
            "annotate",
            "networkpolicy",
            "allow-2",
            "-n",
            namespace,
            f"{NODEPORTS_KEY}=forged",
            "--overwrite",
            kubeconfig=sa,
        )
        deadline = time.monotonic() + 30
        while (repaired := _repaired_at(recorder.events, "allow-2", true_of_2)) is None:
            assert time.monotonic() < deadline, "the exempt identity's edit was not repaired"
            time.sleep(0.05)
    assert _admissions(webhook) == before, "an annotation-only write of the webhook's ServiceAccount was admitted"
    took = repaired - since
    print(f"\nthe exempt identity's edit was stored, then repaired by the reconciler after {took:.2f} s")
    assert stored("allow-2") == true_of_2
    assert took <= BOUND_SECONDS


def _repaired_at(events: list[Recorded], name: str, true: dict[str, str]) -> float | None:
    """When `name` carried its true annotations again after an event storing a forged one."""
    forged = False
    for event in events:
        if event.name != name:
            continue
        if event.annotations.get(NODEPORTS_KEY) == "forged":
            forged = True
        elif forged and event.annotations == true:
            return event.at
    return None
