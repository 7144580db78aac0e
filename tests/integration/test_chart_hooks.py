"""The chart's certificate hooks through the real apiserver, with exactly the RBAC the chart gives them.

`python -m certs bootstrap` / `inject` run in a Job under the hook ServiceAccount; here the same
functions run with a token of that ServiceAccount, bound by the Role/ClusterRole that
`helm template` renders (only the in-cluster config loader differs).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509

from certs import incluster
from certs.install import PUBLIC_KEYS_CONFIGMAP, SIGNING_SECRET, TLS_SECRET
from tests.components import NAMESPACE, Installation
from tests.controlplane.harness import ControlPlane
from tests.integration.test_chart import _docs, helm_template

NOW = datetime.datetime.now(datetime.UTC)


def _hook_rbac(namespace: str) -> list[dict[str, Any]]:
    rendered = helm_template("--namespace", namespace, "--show-only", "templates/certs-hooks.yaml")
    objects = [o for o in _docs(rendered) if o["kind"] != "Job"]
    for obj in objects:
        obj["metadata"].pop("annotations", None)
    return objects


@contextlib.contextmanager
def _hook_client(plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """An ApiClient with the token of the hook ServiceAccount, bound by the chart's hook RBAC."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": _hook_rbac(namespace)})
    plane.kubectl("apply", "-f", "-", input=body)
    kubeconfig = plane.service_account_kubeconfig(namespace, "nodeport-guard-certs", tmp_path / "hook.kubeconfig")
    api_client = plane.api_client(kubeconfig)
    try:
        yield api_client
    finally:
        api_client.close()
        plane.kubectl("delete", "--ignore-not-found", "-f", "-", input=body, check=False)


def _secret(plane: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    data: dict[str, str] = plane.kubectl_json("get", "secret", name, "-n", namespace)["data"]
    return data


def test_bootstrap_makes_the_keys_in_the_cluster_once(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with _hook_client(control_plane, namespace, tmp_path) as api_client:
        assert incluster.bootstrap(api_client, namespace, NOW) == ("created", "created")
        tls, signing = _secret(control_plane, namespace, TLS_SECRET), _secret(control_plane, namespace, SIGNING_SECRET)
        cert = x509.load_pem_x509_certificate(base64.b64decode(tls["tls.crt"]))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        assert f"nodeport-guard-webhook.{namespace}.svc" in names
        public = control_plane.kubectl_json("get", "configmap", PUBLIC_KEYS_CONFIGMAP, "-n", namespace)["data"]
        assert public, "no public key published"
        # An upgrade runs the hook again: what exists is kept, byte for byte.
        assert incluster.bootstrap(api_client, namespace, NOW) == ("kept", "unchanged")
        assert _secret(control_plane, namespace, TLS_SECRET) == tls
        assert _secret(control_plane, namespace, SIGNING_SECRET) == signing
        # cert-manager's path: only the signing key.
        assert incluster.bootstrap(api_client, namespace, NOW, tls=False) == ("skipped", "unchanged")


def test_inject_copies_the_secrets_ca_into_both_webhooks(
    control_plane: ControlPlane, installation: Installation, tmp_path: Path
) -> None:
    """In the installation's own namespace, whose webhooks already trust its CA: the hook's RBAC
    suffices (read the Secret, read and patch both configurations) and a re-run changes nothing."""
    with _hook_client(control_plane, NAMESPACE, tmp_path) as hook_client:
        results = incluster.inject(hook_client, NAMESPACE)
        again = incluster.bootstrap(hook_client, NAMESPACE, NOW)
    assert {kind for kind, _name, _outcome in results} == {
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    assert {outcome for _kind, _name, outcome in results} == {"unchanged"}
    assert again == ("kept", "unchanged")
