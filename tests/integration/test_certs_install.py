"""`python -m certs install|rotate` against the real kube-apiserver: Secrets, public keys, caBundles, idempotence."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.signing import PublicKey, parse_private_key_pem, parse_public_keys_pem
from tests.controlplane.harness import ControlPlane

REPO = Path(__file__).resolve().parents[2]
FILTER = REPO / "manifests" / "tools" / "without_kinds.py"
KINDS = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")
PRIVATE_KEY_SECRET = "nodeport-guard-signing-private-key"
PUBLIC_KEYS_CONFIGMAP = "nodeport-guard-signing-public-keys"


def certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certs", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = certs(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def base_webhook_configurations(plane: ControlPlane) -> str:
    """Both webhook configurations exactly as the base renders them (a JSON List)."""
    rendered = plane.kubectl("kustomize", str(REPO / "manifests")).stdout
    # kubectl's offline YAML -> JSON, then the repository's filter keeps the two configurations.
    as_json = plane.kubectl(
        "annotate", "--local", "-f", "-", "-o", "json", "nodeport-guard.io/none-", input=rendered
    ).stdout
    decoder, pos, kinds = json.JSONDecoder(), 0, set()
    while as_json[pos:].strip():
        obj, pos = decoder.raw_decode(as_json, len(as_json) - len(as_json[pos:].lstrip()))
        kinds.add(obj["kind"])
    others = sorted(kinds - {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"})
    proc = subprocess.run(
        [sys.executable, str(FILTER), *others], input=as_json, capture_output=True, text=True, check=True
    )
    items = json.loads(proc.stdout)["items"]
    assert sorted(o["kind"] for o in items) == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    return proc.stdout


@pytest.fixture
def base_webhooks(control_plane: ControlPlane) -> Iterator[None]:
    """The base's webhook configurations for the duration of one test; whatever was there before is restored.

    With failurePolicy Fail and no webhook behind them they block NetworkPolicy writes, so they
    must not outlive the test; a session webhook fixture's configuration must come back intact.
    """
    saved: list[dict[str, Any]] = []
    for kind in KINDS:
        got = control_plane.kubectl("get", kind, "nodeport-guard", "-o", "json", "--ignore-not-found")
        if got.stdout.strip():
            obj = json.loads(got.stdout)
            for name in SERVER_FIELDS:
                obj["metadata"].pop(name, None)
            saved.append(obj)
            control_plane.kubectl("delete", kind, "nodeport-guard")
    try:
        control_plane.kubectl("create", "-f", "-", input=base_webhook_configurations(control_plane))
        yield
    finally:
        for kind in KINDS:
            control_plane.kubectl("delete", kind, "nodeport-guard", "--ignore-not-found", check=False)
        for obj in saved:
            control_plane.kubectl("create", "-f", "-", input=json.dumps(obj))


def secret(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = plane.kubectl_json("get", "secret", name, "-n", namespace)
    return result


def public_keys(plane: ControlPlane, namespace: str) -> dict[str, tuple[PublicKey, ...]]:
    """The public-key ConfigMap, parsed: data key -> keys."""
    data = plane.kubectl_json("get", "configmap", PUBLIC_KEYS_CONFIGMAP, "-n", namespace)["data"]
    return {k: parse_public_keys_pem(v.encode(), k) for k, v in data.items()}


def local_public_key(cert_dir: Path) -> PublicKey:
    return parse_private_key_pem((cert_dir / "signing.pem").read_bytes(), "signing.pem").public


def ca_bundles(plane: ControlPlane) -> dict[tuple[str, str], str | None]:
    bundles: dict[tuple[str, str], str | None] = {}
    for kind in KINDS:
        for hook in plane.kubectl_json("get", kind, "nodeport-guard")["webhooks"]:
            bundles[(kind, hook["name"])] = hook["clientConfig"].get("caBundle")
    return bundles


def resource_versions(plane: ControlPlane, namespace: str) -> list[str]:
    objects = [
        secret(plane, namespace, "nodeport-guard-webhook-tls"),
        secret(plane, namespace, PRIVATE_KEY_SECRET),
        plane.kubectl_json("get", "configmap", PUBLIC_KEYS_CONFIGMAP, "-n", namespace),
        *(plane.kubectl_json("get", kind, "nodeport-guard") for kind in KINDS),
    ]
    return [o["metadata"]["resourceVersion"] for o in objects]


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    ok("generate", "--out", str(out), "--ip", "127.0.0.1")
    return out


def test_install_creates_secrets_and_injects_ca_into_every_webhook(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    assert set(ca_bundles(control_plane).values()) == {None}  # the base ships none
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)

    tls = secret(control_plane, namespace, "nodeport-guard-webhook-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert tls["data"] == {
        "tls.crt": b64((cert_dir / "tls.crt").read_bytes()),
        "tls.key": b64((cert_dir / "tls.key").read_bytes()),
        "ca.crt": b64((cert_dir / "ca.crt").read_bytes()),
    }  # never ca.key
    signing = secret(control_plane, namespace, PRIVATE_KEY_SECRET)
    assert signing["data"] == {"key": b64((cert_dir / "signing.pem").read_bytes())}
    # The public half, and only it, in a ConfigMap of its own (what enforcers may read).
    assert public_keys(control_plane, namespace) == {"current": (local_public_key(cert_dir),)}

    ca = b64((cert_dir / "ca.crt").read_bytes())
    assert ca_bundles(control_plane) == {
        ("mutatingwebhookconfiguration", "mutate.nodeport-guard.io"): ca,
        ("validatingwebhookconfiguration", "validate.nodeport-guard.io"): ca,
    }
    # Only the caBundle changed: the Service reference is intact.
    mutating = control_plane.kubectl_json("get", "mutatingwebhookconfiguration", "nodeport-guard")
    assert mutating["webhooks"][0]["clientConfig"]["service"]["name"] == "nodeport-guard-webhook"

    # A second run writes nothing.
    before = resource_versions(control_plane, namespace)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)
    assert resource_versions(control_plane, namespace) == before


def test_new_ca_updates_tls_and_bundles_but_keeps_the_signing_key_unless_asked(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)
    first_pem = (cert_dir / "signing.pem").read_bytes()
    first = local_public_key(cert_dir)

    ok("generate", "--out", str(cert_dir), "--force", "--new-signing-key")
    assert (cert_dir / "signing.pem").read_bytes() != first_pem
    proc = ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)
    assert "already holds a different signing key" in proc.stderr and "--replace-signing-key" in proc.stderr
    assert secret(control_plane, namespace, PRIVATE_KEY_SECRET)["data"] == {"key": b64(first_pem)}
    assert public_keys(control_plane, namespace) == {"current": (first,)}
    tls = secret(control_plane, namespace, "nodeport-guard-webhook-tls")
    assert tls["data"]["tls.crt"] == b64((cert_dir / "tls.crt").read_bytes())
    assert set(ca_bundles(control_plane).values()) == {b64((cert_dir / "ca.crt").read_bytes())}

    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--replace-signing-key")
    new = local_public_key(cert_dir)
    assert secret(control_plane, namespace, PRIVATE_KEY_SECRET)["data"] == {
        "key": b64((cert_dir / "signing.pem").read_bytes())
    }
    # The old public key stays trusted (as 'previous') until the webhook has re-signed every annotation.
    assert public_keys(control_plane, namespace) == {"current": (new,), "previous": (first,)}
    # Re-running the same step mid-rotation changes nothing (the previous key is not lost).
    before = resource_versions(control_plane, namespace)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--replace-signing-key")
    assert resource_versions(control_plane, namespace) == before
    ok(
        "install",
        "--kubeconfig",
        kubeconfig,
        "--dir",
        str(cert_dir),
        "--namespace",
        namespace,
        "--signing-key-only",
        "--drop-previous-signing-key",
    )
    assert public_keys(control_plane, namespace) == {"current": (new,)}


def test_signing_key_rotation_through_the_cli_in_the_documented_order(
    control_plane: ControlPlane, namespace: str, cert_dir: Path
) -> None:
    """docs/operations.md, "Signing-key rotation": a new pair, install, (webhook restart), drop the previous key."""
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--signing-key-only")
    old = local_public_key(cert_dir)
    proc = ok("signing-key", "--dir", str(cert_dir), "--new")
    new = local_public_key(cert_dir)
    assert new != old and new.key_id in proc.stderr and "--replace-signing-key" in proc.stderr
    proc = ok(
        "install",
        "--kubeconfig",
        kubeconfig,
        "--dir",
        str(cert_dir),
        "--namespace",
        namespace,
        "--signing-key-only",
        "--replace-signing-key",
    )
    assert f"trusted key ids: {new.key_id}, {old.key_id}" in proc.stderr
    assert "rollout restart deployment/nodeport-guard-webhook" in proc.stderr
    assert public_keys(control_plane, namespace) == {"current": (new,), "previous": (old,)}
    private = base64.b64decode(secret(control_plane, namespace, PRIVATE_KEY_SECRET)["data"]["key"])
    assert parse_private_key_pem(private, "Secret").public == new


def test_rotate_updates_the_tls_secret(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)
    old = (cert_dir / "tls.crt").read_bytes()
    ok("rotate", "--dir", str(cert_dir), "--kubeconfig", kubeconfig, "--namespace", namespace, "--force")
    new = (cert_dir / "tls.crt").read_bytes()
    assert new != old
    tls = secret(control_plane, namespace, "nodeport-guard-webhook-tls")
    assert tls["data"]["tls.crt"] == b64(new)
    assert tls["data"]["tls.key"] == b64((cert_dir / "tls.key").read_bytes())
    # Same CA: the injected bundles stay valid and untouched.
    assert set(ca_bundles(control_plane).values()) == {b64((cert_dir / "ca.crt").read_bytes())}


def test_signing_key_only_leaves_tls_and_webhooks_alone(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--signing-key-only")
    assert secret(control_plane, namespace, PRIVATE_KEY_SECRET)["data"]["key"]
    assert public_keys(control_plane, namespace) == {"current": (local_public_key(cert_dir),)}
    missing = control_plane.kubectl("get", "secret", "nodeport-guard-webhook-tls", "-n", namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    assert set(ca_bundles(control_plane).values()) == {None}


def test_install_names_the_fix_when_the_namespace_is_missing(control_plane: ControlPlane, cert_dir: Path) -> None:
    proc = certs(
        "install", "--kubeconfig", str(control_plane.kubeconfig), "--dir", str(cert_dir), "--namespace", "t-absent"
    )
    assert proc.returncode == 1
    assert "namespace t-absent does not exist" in proc.stderr and "kubectl apply -k manifests/" in proc.stderr


def test_install_names_the_fix_when_webhook_configurations_are_missing(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    control_plane.kubectl("delete", "validatingwebhookconfiguration", "nodeport-guard")
    proc = certs(
        "install", "--kubeconfig", str(control_plane.kubeconfig), "--dir", str(cert_dir), "--namespace", namespace
    )
    assert proc.returncode == 1
    assert "ValidatingWebhookConfiguration nodeport-guard does not exist" in proc.stderr


def test_reapplying_the_base_keeps_the_injected_ca_bundle(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    # Upgrades re-run `kubectl apply -k manifests/`: the caBundle the base never sets must survive.
    configs = base_webhook_configurations(control_plane)
    for kind in KINDS:
        control_plane.kubectl("delete", kind, "nodeport-guard")
    control_plane.kubectl("apply", "-f", "-", input=configs)
    ok("install", "--kubeconfig", str(control_plane.kubeconfig), "--dir", str(cert_dir), "--namespace", namespace)
    control_plane.kubectl("apply", "-f", "-", input=configs)
    assert set(ca_bundles(control_plane).values()) == {b64((cert_dir / "ca.crt").read_bytes())}


def test_public_key_only_publishes_the_key_before_any_webhook_can_sign_with_it(
    control_plane: ControlPlane, namespace: str, cert_dir: Path
) -> None:
    """The first step of the upgrade from HMAC (docs/operations.md): enforcers trust the key first."""
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--public-key-only")
    assert public_keys(control_plane, namespace) == {"current": (local_public_key(cert_dir),)}
    missing = control_plane.kubectl("get", "secret", PRIVATE_KEY_SECRET, "-n", namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace, "--signing-key-only")
    assert secret(control_plane, namespace, PRIVATE_KEY_SECRET)["data"] == {
        "key": b64((cert_dir / "signing.pem").read_bytes())
    }
    assert public_keys(control_plane, namespace) == {"current": (local_public_key(cert_dir),)}


def _pem_certs(bundle_b64: str | None) -> list[bytes]:
    assert bundle_b64 is not None
    text = base64.b64decode(bundle_b64)
    end = b"-----END CERTIFICATE-----"
    return [block.strip() + b"\n" + end + b"\n" for block in text.split(end) if block.strip()]


def test_rotate_ca_trusts_both_cas_until_the_previous_one_is_dropped(
    control_plane: ControlPlane, namespace: str, cert_dir: Path, base_webhooks: None
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    ok("install", "--kubeconfig", kubeconfig, "--dir", str(cert_dir), "--namespace", namespace)
    old_ca = (cert_dir / "ca.crt").read_bytes()
    started = ok("rotate", "--dir", str(cert_dir), "--kubeconfig", kubeconfig, "--namespace", namespace, "--ca")
    new_ca = (cert_dir / "ca.crt").read_bytes()
    assert new_ca != old_ca and (cert_dir / "ca-previous.crt").read_bytes() == old_ca
    assert "--drop-previous-ca" in started.stderr  # the log says how to finish
    # The apiserver trusts the new CA first and the old one still; the new certificate is from the new CA.
    for bundle in ca_bundles(control_plane).values():
        assert _pem_certs(bundle) == [new_ca.strip() + b"\n", old_ca.strip() + b"\n"]
    tls = secret(control_plane, namespace, "nodeport-guard-webhook-tls")
    assert tls["data"]["tls.crt"] == b64((cert_dir / "tls.crt").read_bytes())
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "ca.crt"), str(cert_dir / "tls.crt")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A second rotation before the first is finished is refused, naming the fix.
    again = certs("rotate", "--dir", str(cert_dir), "--kubeconfig", kubeconfig, "--namespace", namespace, "--ca")
    assert again.returncode == 2 and "--drop-previous-ca" in again.stderr
    ok("rotate", "--dir", str(cert_dir), "--kubeconfig", kubeconfig, "--namespace", namespace, "--drop-previous-ca")
    assert not (cert_dir / "ca-previous.crt").exists()
    assert set(ca_bundles(control_plane).values()) == {b64(new_ca)}
    assert secret(control_plane, namespace, "nodeport-guard-webhook-tls")["data"]["ca.crt"] == b64(new_ca)
