"""manifests/ against the real kube-apiserver: server-side dry runs of the base and the cert-manager overlay, RBAC."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from contract.signing import parse_public_keys_pem
from tests.components import Installation
from tests.controlplane.harness import ControlPlane

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "manifests"
CERT_MANAGER = REPO / "manifests" / "overlays" / "cert-manager"
HMAC_TRANSITION = REPO / "manifests" / "overlays" / "hmac-transition"
PRIVATE_KEY_SECRET = "nodeport-guard-signing-private-key"
PUBLIC_KEYS_CONFIGMAP = "nodeport-guard-signing-public-keys"
LEGACY_HMAC_SECRET = "nodeport-guard-signing-key"
FILTER = REPO / "manifests" / "tools" / "without_kinds.py"
NAMESPACE = "nodeport-guard"
WEBHOOK_SA = f"system:serviceaccount:{NAMESPACE}:nodeport-guard-webhook"
ENFORCER_SA = f"system:serviceaccount:{NAMESPACE}:nodeport-guard-enforcer"

BASE_OBJECTS = {
    ("Namespace", "", "nodeport-guard"),
    ("ServiceAccount", NAMESPACE, "nodeport-guard-webhook"),
    ("ServiceAccount", NAMESPACE, "nodeport-guard-enforcer"),
    ("ClusterRole", "", "nodeport-guard-webhook"),
    ("ClusterRole", "", "nodeport-guard-enforcer"),
    ("ClusterRoleBinding", "", "nodeport-guard-webhook"),
    ("ClusterRoleBinding", "", "nodeport-guard-enforcer"),
    ("Role", NAMESPACE, "nodeport-guard-webhook"),
    ("Role", NAMESPACE, "nodeport-guard-enforcer"),
    ("RoleBinding", NAMESPACE, "nodeport-guard-webhook"),
    ("RoleBinding", NAMESPACE, "nodeport-guard-enforcer"),
    ("Deployment", NAMESPACE, "nodeport-guard-webhook"),
    ("Service", NAMESPACE, "nodeport-guard-webhook"),
    ("PodDisruptionBudget", NAMESPACE, "nodeport-guard-webhook"),
    ("DaemonSet", NAMESPACE, "nodeport-guard-enforcer"),
    ("ValidatingAdmissionPolicy", "", "nodeport-guard-enforcer-node-status"),
    ("ValidatingAdmissionPolicyBinding", "", "nodeport-guard-enforcer-node-status"),
    ("MutatingWebhookConfiguration", "", "nodeport-guard"),
    ("ValidatingWebhookConfiguration", "", "nodeport-guard"),
}


def ensure_namespace(plane: ControlPlane) -> None:
    """Create the real Namespace from the base's own file.

    A server-side dry run persists nothing, so the dry-run Namespace does not exist when the
    namespaced objects after it are admitted ("namespaces nodeport-guard not found"); with
    the Namespace in place every object is checked. Namespaces cannot be deleted here (no
    namespace controller), and the session's real installation applies the same one.
    """
    plane.kubectl("apply", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))


def render(plane: ControlPlane, directory: Path) -> str:
    return plane.kubectl("kustomize", str(directory)).stdout


def to_json(plane: ControlPlane, yaml_text: str) -> str:
    """kubectl's own offline YAML -> JSON (a stream of objects), as manifests/README.md documents."""
    return plane.kubectl(
        "annotate", "--local", "-f", "-", "-o", "json", "nodeport-guard.io/none-", input=yaml_text
    ).stdout


def without(plane: ControlPlane, yaml_text: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(FILTER), *args],
        input=to_json(plane, yaml_text),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def json_stream(text: str) -> list[dict[str, Any]]:
    """The objects of a stream of JSON documents, as `kubectl ... -o json` prints them for several inputs."""
    decoder, docs, rest = json.JSONDecoder(), [], text.lstrip()
    while rest:
        doc, end = decoder.raw_decode(rest)
        docs.append(doc)
        rest = rest[end:].lstrip()
    return docs


WEBHOOK_CONFIGURATION_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
DRY_RUN_SUFFIX = "-manifest-dry-run"


def dry_run(plane: ControlPlane, yaml_text: str) -> dict[tuple[str, str, str], Any]:
    """A server-side dry run of the objects, as if nothing of ours were stored yet.

    The session's installation stores webhook configurations of the same names pointing at a
    local url; an apply would merge ours into them (url and service: invalid). So the
    cluster-scoped webhook configurations are dry-run under a name nobody stores, and reported
    under their own.
    """
    objects = [o for doc in json_stream(to_json(plane, yaml_text))
               for o in (doc["items"] if doc.get("kind") == "List" else [doc])]
    for o in objects:
        if o["kind"] in WEBHOOK_CONFIGURATION_KINDS:
            o["metadata"]["name"] += DRY_RUN_SUFFIX
    stream = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    result = plane.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=stream, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    items = out["items"] if out.get("kind") == "List" else [out]
    for o in items:
        if o["kind"] in WEBHOOK_CONFIGURATION_KINDS:
            o["metadata"]["name"] = o["metadata"]["name"].removesuffix(DRY_RUN_SUFFIX)
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in items}


def test_base_dry_runs_server_side_with_every_object(control_plane: ControlPlane) -> None:
    ensure_namespace(control_plane)
    objects = dry_run(control_plane, render(control_plane, BASE))  # what `kubectl apply -k manifests/` sends
    assert set(objects) == BASE_OBJECTS


def test_base_webhook_configurations_as_the_apiserver_stores_them(control_plane: ControlPlane) -> None:
    ensure_namespace(control_plane)
    objects = dry_run(control_plane, render(control_plane, BASE))
    for kind, name, path in (
        ("MutatingWebhookConfiguration", "mutate.nodeport-guard.io", "/mutate"),
        ("ValidatingWebhookConfiguration", "validate.nodeport-guard.io", "/validate"),
    ):
        (hook,) = objects[(kind, "", "nodeport-guard")]["webhooks"]
        assert hook["name"] == name
        assert hook["clientConfig"] == {
            "service": {"namespace": NAMESPACE, "name": "nodeport-guard-webhook", "path": path, "port": 443}
        }  # and no caBundle: the certs tool or cert-manager injects it
        assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == ("Fail", "None", 5)
        assert hook["matchPolicy"] == "Equivalent" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["nodeport-guard", "kube-system"]}
        ]
        assert [(r["apiGroups"], r["resources"], sorted(r["operations"])) for r in hook["rules"]] == [
            (["networking.k8s.io"], ["networkpolicies"], ["CREATE", "UPDATE"])
        ]
        if kind == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded"
        # Only the reconciler's annotation writes skip admission: its ServiceAccount, spec unchanged.
        (condition,) = hook["matchConditions"]
        assert f"request.userInfo.username == '{WEBHOOK_SA}'" in condition["expression"]
        assert "object.spec == oldObject.spec" in condition["expression"]
    pod = objects[("Deployment", NAMESPACE, "nodeport-guard-webhook")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == WEBHOOK_SA.rsplit(":", 1)[1]


def test_base_workloads_carry_the_promised_security_settings(control_plane: ControlPlane) -> None:
    ensure_namespace(control_plane)
    objects = dry_run(control_plane, render(control_plane, BASE))
    webhook = objects[("Deployment", NAMESPACE, "nodeport-guard-webhook")]["spec"]
    pod = webhook["template"]["spec"]
    (container,) = pod["containers"]
    assert webhook["replicas"] == 2
    assert container["command"] == ["nodeport-guard-webhook", "serve"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert container["resources"]["limits"]["memory"] == "384Mi"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NPG_BIND"] == "0.0.0.0:8443"
    assert env["NPG_SIGNING_KEY_FILE"] == "/etc/nodeport-guard/signing/key"
    assert env["NPG_POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "nodeport-guard-webhook-tls"
    assert volumes["signing-key"]["secret"]["secretName"] == PRIVATE_KEY_SECRET

    enforcer = objects[("DaemonSet", NAMESPACE, "nodeport-guard-enforcer")]["spec"]
    pod = enforcer["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert container["securityContext"]["runAsUser"] == 0 and not container["securityContext"]["privileged"]
    assert enforcer["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NPG_PUBLIC_KEYS_CONFIGMAP"] == f"{NAMESPACE}/{PUBLIC_KEYS_CONFIGMAP}"
    assert not {"NPG_SIGNING_KEY_SECRET", "NPG_ACCEPT_LEGACY_HMAC", "NPG_LEGACY_HMAC_SECRET"} & set(env)
    assert all(v.get("secret") is None for v in pod["volumes"])  # the enforcer mounts no Secret either
    assert env["NPG_NODE_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}


def test_cert_manager_overlay_needs_its_crds_and_dry_runs_without_them(control_plane: ControlPlane) -> None:
    ensure_namespace(control_plane)
    rendered = render(control_plane, CERT_MANAGER)
    # The premise of the filter: this apiserver has no cert-manager CRDs and says so.
    unfiltered = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert unfiltered.returncode != 0
    assert "cert-manager.io" in unfiltered.stderr
    objects = dry_run(control_plane, without(control_plane, rendered, "--group", "cert-manager.io"))
    assert set(objects) == BASE_OBJECTS
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = objects[(kind, "", "nodeport-guard")]["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == "nodeport-guard/nodeport-guard-webhook"


def test_cert_manager_overlay_issues_the_secret_the_deployment_mounts(control_plane: ControlPlane) -> None:
    rendered = json.loads(without(control_plane, render(control_plane, CERT_MANAGER), "--group", "apps"))["items"]
    cert_manager = {
        (o["kind"], o["metadata"]["name"]): o for o in rendered if o["apiVersion"].startswith("cert-manager")
    }
    assert sorted(cert_manager) == [
        ("Certificate", "nodeport-guard-ca"),
        ("Certificate", "nodeport-guard-webhook"),
        ("Issuer", "nodeport-guard-ca"),
        ("Issuer", "nodeport-guard-selfsigned"),
    ]
    ca = cert_manager[("Certificate", "nodeport-guard-ca")]["spec"]
    assert ca["isCA"] and ca["issuerRef"]["name"] == "nodeport-guard-selfsigned"
    assert cert_manager[("Issuer", "nodeport-guard-ca")]["spec"]["ca"]["secretName"] == ca["secretName"]
    serving = cert_manager[("Certificate", "nodeport-guard-webhook")]["spec"]
    assert serving["secretName"] == "nodeport-guard-webhook-tls"
    assert serving["issuerRef"]["name"] == "nodeport-guard-ca"
    assert "nodeport-guard-webhook.nodeport-guard.svc" in serving["dnsNames"]
    assert all(o["kind"] not in ("Deployment", "DaemonSet") for o in rendered)  # --group apps dropped them


def test_filter_rejects_input_it_cannot_read() -> None:
    proc = subprocess.run(
        [sys.executable, str(FILTER), "--group", "cert-manager.io"],
        input="kind: Issuer\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "kubectl annotate --local" in proc.stderr


@pytest.fixture(scope="module")
def rbac_applied(control_plane: ControlPlane) -> None:
    """Apply for real everything but the webhook configurations.

    Those, with failurePolicy Fail and no webhook running yet, would block every other test's
    NetworkPolicy writes; the rest is what the session's installation applies anyway.
    """
    ensure_namespace(control_plane)
    rendered = without(
        control_plane, render(control_plane, BASE), "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"
    )
    control_plane.kubectl("apply", "-f", "-", input=rendered)


@pytest.mark.parametrize(
    ("user", "verb", "resource", "namespace", "allowed"),
    [
        (WEBHOOK_SA, "watch", "services", "", True),
        (WEBHOOK_SA, "list", "pods", "", True),
        (WEBHOOK_SA, "patch", "networkpolicies.networking.k8s.io", "", True),
        (WEBHOOK_SA, "create", "networkpolicies.networking.k8s.io", "default", False),
        (WEBHOOK_SA, "delete", "networkpolicies.networking.k8s.io", "default", False),
        (WEBHOOK_SA, "create", "events", "default", True),
        (WEBHOOK_SA, "create", "events.events.k8s.io", "default", True),
        (WEBHOOK_SA, "create", "leases.coordination.k8s.io", NAMESPACE, True),
        (WEBHOOK_SA, "update", "leases.coordination.k8s.io/nodeport-guard-reconciler", NAMESPACE, True),
        (WEBHOOK_SA, "update", "leases.coordination.k8s.io/something-else", NAMESPACE, False),
        (WEBHOOK_SA, "create", "leases.coordination.k8s.io", "default", False),
        # InForce Events: node names, the status Leases (read only) and its own watermark Lease.
        (WEBHOOK_SA, "watch", "nodes", "", True),
        (WEBHOOK_SA, "patch", "nodes", "", False),
        (WEBHOOK_SA, "watch", "leases.coordination.k8s.io", NAMESPACE, True),
        (WEBHOOK_SA, "list", "leases.coordination.k8s.io", "default", False),
        (WEBHOOK_SA, "patch", "leases.coordination.k8s.io/nodeport-guard-in-force", NAMESPACE, True),
        (WEBHOOK_SA, "patch", "leases.coordination.k8s.io/nodeport-guard-node-node1", NAMESPACE, False),
        (WEBHOOK_SA, "update", "leases.coordination.k8s.io/nodeport-guard-node-node1", NAMESPACE, False),
        (WEBHOOK_SA, "get", f"secrets/{PRIVATE_KEY_SECRET}", NAMESPACE, False),  # mounted, never read via the API
        (WEBHOOK_SA, "get", f"secrets/{LEGACY_HMAC_SECRET}", NAMESPACE, False),
        (ENFORCER_SA, "watch", "networkpolicies.networking.k8s.io", "", True),
        (ENFORCER_SA, "patch", "networkpolicies.networking.k8s.io", "default", False),
        (ENFORCER_SA, "get", f"secrets/{PRIVATE_KEY_SECRET}", NAMESPACE, False),
        (ENFORCER_SA, "get", f"secrets/{LEGACY_HMAC_SECRET}", NAMESPACE, False),
        (ENFORCER_SA, "get", f"configmaps/{PUBLIC_KEYS_CONFIGMAP}", NAMESPACE, True),
        (ENFORCER_SA, "update", f"configmaps/{PUBLIC_KEYS_CONFIGMAP}", NAMESPACE, False),
        (ENFORCER_SA, "list", "configmaps", NAMESPACE, False),
        (ENFORCER_SA, "get", "secrets/nodeport-guard-webhook-tls", NAMESPACE, False),
        (ENFORCER_SA, "list", "secrets", NAMESPACE, False),
        (ENFORCER_SA, "create", "events", "default", True),
        (ENFORCER_SA, "list", "pods", "", False),
        # The canary: node names and addresses to probe; nothing else of a Node.
        (ENFORCER_SA, "watch", "nodes", "", True),
        (ENFORCER_SA, "patch", "nodes", "", False),
        (ENFORCER_SA, "get", "services", "nodeport-guard-canary", False),
        # Its node's status Lease: create and patch in our namespace only, never read others'.
        (ENFORCER_SA, "create", "leases.coordination.k8s.io", NAMESPACE, True),
        (ENFORCER_SA, "patch", "leases.coordination.k8s.io/nodeport-guard-node-node1", NAMESPACE, True),
        (ENFORCER_SA, "update", "leases.coordination.k8s.io/nodeport-guard-node-node1", NAMESPACE, False),
        (ENFORCER_SA, "delete", "leases.coordination.k8s.io/nodeport-guard-node-node1", NAMESPACE, False),
        (ENFORCER_SA, "list", "leases.coordination.k8s.io", NAMESPACE, False),
        (ENFORCER_SA, "get", "leases.coordination.k8s.io/nodeport-guard-reconciler", NAMESPACE, False),
        (ENFORCER_SA, "create", "leases.coordination.k8s.io", "default", False),
        (ENFORCER_SA, "create", "leases.coordination.k8s.io", "kube-node-lease", False),
    ],
)
def test_rbac_is_least_privilege(
    control_plane: ControlPlane, rbac_applied: None, user: str, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    answer = control_plane.kubectl("auth", "can-i", verb, resource, *scope, f"--as={user}", check=False)
    assert answer.stdout.strip() == ("yes" if allowed else "no"), answer.stderr


def test_the_enforcer_token_gets_403_on_the_private_key_and_reads_only_the_public_keys(
    control_plane: ControlPlane, installation: Installation
) -> None:
    """Through the real apiserver with the enforcer's own ServiceAccount token, not `can-i`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    enforcer = control_plane.api_client(installation.enforcer_kubeconfig)
    webhook = control_plane.api_client(installation.webhook_kubeconfig)
    try:
        for api in (enforcer, webhook):  # the webhook mounts the Secret; its token cannot read it either
            for secret in (PRIVATE_KEY_SECRET, LEGACY_HMAC_SECRET, "nodeport-guard-webhook-tls"):
                with pytest.raises(ApiException) as denied:
                    client.CoreV1Api(api).read_namespaced_secret(secret, NAMESPACE)
                assert denied.value.status == 403, (secret, denied.value)
        # The private key exists (so the 403 is RBAC, not a 404 in disguise).
        admin = control_plane.kubectl_json("get", "secret", PRIVATE_KEY_SECRET, "-n", NAMESPACE)
        assert set(admin["data"]) == {"key"}
        data = client.CoreV1Api(enforcer).read_namespaced_config_map(PUBLIC_KEYS_CONFIGMAP, NAMESPACE).data or {}
        assert set(data) == {"current"} and "PRIVATE" not in data["current"]
        trusted = parse_public_keys_pem(data["current"].encode(), PUBLIC_KEYS_CONFIGMAP)
        assert trusted == (installation.signing_key.public,)
    finally:
        enforcer.close()
        webhook.close()


def test_the_enforcer_token_writes_only_node_status_leases(
    control_plane: ControlPlane, installation: Installation, rbac_applied: None
) -> None:
    """RBAC cannot name per-node Leases; the ValidatingAdmissionPolicy keeps the enforcer's writes
    to nodeport-guard-node-* (the webhook's leader Lease stays out of its reach). Real token, real apiserver."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    enforcer = control_plane.api_client(installation.enforcer_kubeconfig)
    leases = client.CoordinationV1Api(enforcer)

    def lease(name: str) -> Any:  # a dict is sent as is
        return {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"holderIdentity": "x"}}

    # The policy is applied with the rest of the base; wait until the apiserver enforces it.
    deadline = time.monotonic() + 30
    while True:
        try:
            leases.create_namespaced_lease(NAMESPACE, lease("nodeport-guard-enforcer-probe"))
        except ApiException as exc:
            if exc.status in (403, 422) and "node status Leases" in str(exc.body):
                break
            raise
        control_plane.kubectl("delete", "lease", "nodeport-guard-enforcer-probe", "-n", NAMESPACE)
        assert time.monotonic() < deadline, "ValidatingAdmissionPolicy not enforced after 30 s"
        time.sleep(0.5)
    try:
        leases.create_namespaced_lease(NAMESPACE, lease("nodeport-guard-node-test-a"))
        leases.patch_namespaced_lease("nodeport-guard-node-test-a", NAMESPACE, {"spec": {"holderIdentity": "y"}})
        with pytest.raises(ApiException) as denied:
            leases.create_namespaced_lease(NAMESPACE, lease("nodeport-guard-reconciler"))
        assert denied.value.status in (403, 422) and "node status Leases" in str(denied.value.body)
        with pytest.raises(ApiException) as forbidden:
            leases.read_namespaced_lease("nodeport-guard-node-test-a", NAMESPACE)
        assert forbidden.value.status == 403
    finally:
        control_plane.kubectl("delete", "lease", "nodeport-guard-node-test-a", "-n", NAMESPACE, "--ignore-not-found")
        enforcer.close()


def test_hmac_transition_overlay_adds_only_the_legacy_setting_and_its_read_right(control_plane: ControlPlane) -> None:
    ensure_namespace(control_plane)
    objects = dry_run(
        control_plane,
        without(
            control_plane,
            render(control_plane, HMAC_TRANSITION),
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ),
    )
    base = {k for k in BASE_OBJECTS if not k[0].endswith("WebhookConfiguration")}
    legacy = {
        ("Role", NAMESPACE, "nodeport-guard-enforcer-legacy-hmac"),
        ("RoleBinding", NAMESPACE, "nodeport-guard-enforcer-legacy-hmac"),
    }
    assert set(objects) == base | legacy
    role = objects[("Role", NAMESPACE, "nodeport-guard-enforcer-legacy-hmac")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [LEGACY_HMAC_SECRET], "verbs": ["get"]}
    ]
    (container,) = objects[("DaemonSet", NAMESPACE, "nodeport-guard-enforcer")]["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NPG_ACCEPT_LEGACY_HMAC"] == "true"
    assert env["NPG_LEGACY_HMAC_SECRET"] == f"{NAMESPACE}/{LEGACY_HMAC_SECRET}"
    assert env["NPG_PUBLIC_KEYS_CONFIGMAP"] == f"{NAMESPACE}/{PUBLIC_KEYS_CONFIGMAP}"
