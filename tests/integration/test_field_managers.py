"""Every write of ours names its field manager, so a GitOps tool can tell our fields from the user's.

Through the real kube-apiserver: a policy applied by kubectl, re-signed by the real reconciler
(webhook under gunicorn), then `managedFields` read back: our annotation keys belong to
`nodeport-guard-reconciler` only, the user's fields to kubectl only. Also the Secrets, ConfigMap
and caBundles written by `python -m certs install`, and the reconciler's Lease.
"""

from __future__ import annotations

import json
import time
from typing import Any

from certs.install import PUBLIC_KEYS_CONFIGMAP, SIGNING_SECRET, TLS_SECRET, inject_ca_bundle, load_api_client
from contract import field_managers
from contract.annotation import MODE_KEY, owned_keys, read_signed
from tests.components import NAMESPACE, WebhookServer
from tests.controlplane.harness import ControlPlane
from tests.kube_objects import as_list, nodeport_service, pod, policy

HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def _annotation_owners(obj: dict[str, Any]) -> dict[str, set[str]]:
    """annotation key -> the managers whose fieldsV1 name it."""
    owners: dict[str, set[str]] = {}
    for entry in obj["metadata"].get("managedFields") or []:
        annotations = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        for field in annotations:
            owners.setdefault(field.removeprefix("f:"), set()).add(entry["manager"])
    return owners


def _managers(obj: dict[str, Any]) -> set[str]:
    return {entry["manager"] for entry in obj["metadata"].get("managedFields") or []}


def _resigned(plane: ControlPlane, namespace: str, name: str, keys: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The stored policy once the reconciler has bound the signature to its uid (its first write)."""
    deadline = time.monotonic() + timeout
    while True:
        stored: dict[str, Any] = plane.kubectl_json(
            "get", "networkpolicy", name, "-n", namespace, "--show-managed-fields"
        )
        meta = stored["metadata"]
        signed = read_signed(meta.get("annotations"), namespace, name, meta["uid"], keys)
        if signed is not None and signed.policy.uid == meta["uid"]:
            return stored
        if time.monotonic() > deadline:
            raise AssertionError(f"policy {namespace}/{name} not re-signed by the reconciler within {timeout}s")
        time.sleep(0.1)


def test_our_annotation_keys_are_owned_by_our_manager_only(
    control_plane: ControlPlane, namespace: str, webhook: WebhookServer, installation: Any
) -> None:
    mine = policy("deny-all", {}, [], policyTypes=["Ingress"])
    mine["metadata"]["annotations"] = {MODE_KEY: "audit", "team.example/owner": "payments"}
    objects = (
        pod("web-1", {"app": "web"}, HTTP),
        nodeport_service("web", {"app": "web"}, [{"port": 80, "targetPort": "http"}]),
        mine,
    )
    result = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=as_list(*objects), check=False)
    assert result.returncode == 0, result.stderr
    stored = _resigned(control_plane, namespace, "deny-all", installation.verifier_keys)

    ours = owned_keys(stored["metadata"]["annotations"])
    assert ours, "the policy carries no nodeport-guard annotation"
    owners = _annotation_owners(stored)
    for key in ours:
        assert owners.get(key) == {field_managers.RECONCILER}, f"{key} is owned by {owners.get(key)}"
    # What the user wrote stays the user's: kubectl owns it, we never take it over.
    for key in (MODE_KEY, "team.example/owner"):
        assert field_managers.RECONCILER not in owners.get(key, set()), f"we took over {key}: {owners.get(key)}"
        assert owners.get(key), f"{key} has no manager"


def test_certs_install_and_reconciler_lease_name_their_managers(
    control_plane: ControlPlane, webhook: WebhookServer, installation: Any
) -> None:
    for kind, name in (
        ("secret", TLS_SECRET),
        ("secret", SIGNING_SECRET),
        ("configmap", PUBLIC_KEYS_CONFIGMAP),
    ):
        obj = control_plane.kubectl_json("get", kind, name, "-n", NAMESPACE, "--show-managed-fields")
        assert field_managers.CERTS in _managers(obj), f"{kind} {name}: managers {_managers(obj)}"
    # Other tests' fixtures remove and recreate the webhook configurations (kubectl create), so inject the
    # CA here as `certs install` does, into the configurations as they are stored now, from an empty bundle.
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        patch = {"webhooks": [{"name": w["name"], "clientConfig": {"caBundle": None}}
                              for w in control_plane.kubectl_json("get", kind, "nodeport-guard")["webhooks"]]}
        control_plane.kubectl("patch", kind, "nodeport-guard", "--type=strategic", "-p", json.dumps(patch))
    api = load_api_client(control_plane.kubeconfig)
    try:
        inject_ca_bundle(api, (installation.certs_dir / "ca.crt").read_bytes())
    finally:
        api.close()
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        obj = control_plane.kubectl_json("get", kind, "nodeport-guard", "--show-managed-fields")
        assert field_managers.CERTS in _managers(obj), f"{kind}: managers {_managers(obj)}"
    deadline = time.monotonic() + 10
    while True:
        found = control_plane.kubectl(
            "get",
            "lease",
            "nodeport-guard-reconciler",
            "-n",
            NAMESPACE,
            "-o",
            "json",
            "--show-managed-fields",
            check=False,
        )
        managers = _managers(json.loads(found.stdout)) if found.returncode == 0 else set()
        if managers == {field_managers.RECONCILER}:
            break
        assert time.monotonic() < deadline, f"reconciler Lease managers: {managers}"
        time.sleep(0.1)
