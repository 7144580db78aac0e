"""Put certificates and the signing key into a cluster: Secrets and webhook caBundles (Kubernetes I/O).

Everything here is idempotent: objects are created when missing, patched when different and
left alone when equal, so `install` and `rotate` can be re-run safely.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

# Object names, not secret values.
TLS_SECRET = "nodeport-guard-webhook-tls"  # noqa: S105
SIGNING_SECRET = "nodeport-guard-signing-key"  # noqa: S105
SIGNING_SECRET_KEY = "key"  # noqa: S105
SIGNING_PREVIOUS_KEY = "previous"
WEBHOOK_CONFIGURATION = "nodeport-guard"
LABELS = {"app.kubernetes.io/part-of": "nodeport-guard", "app.kubernetes.io/managed-by": "nodeport-guard-certs"}

Outcome = Literal["created", "updated", "unchanged", "kept"]
WebhookKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
WEBHOOK_KINDS: tuple[WebhookKind, ...] = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class InstallError(RuntimeError):
    """The cluster is not in a state we can install into; the message names the object and the fix."""


@dataclass(frozen=True, slots=True)
class InstallReport:
    tls_secret: Outcome | None
    signing_secret: Outcome
    ca_bundles: tuple[tuple[WebhookKind, str, Outcome], ...]  # (kind, webhook name, outcome), sorted


def load_api_client(kubeconfig: Path) -> Any:
    """A kubernetes ApiClient for `kubeconfig` (a new one each call; nothing global)."""
    from kubernetes import client, config

    return config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=client.Configuration()
    )


def apply_tls_secret(api_client: Any, namespace: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> Outcome:
    """Create or update Secret `nodeport-guard-webhook-tls` (type kubernetes.io/tls, with ca.crt)."""
    data = {"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": ca_pem}
    return _apply_secret(api_client, namespace, TLS_SECRET, "kubernetes.io/tls", data)


def apply_signing_secret(
    api_client: Any, namespace: str, key: bytes | None, replace: bool, drop_previous: bool = False
) -> Outcome:
    """Create Secret `nodeport-guard-signing-key`; an existing key is kept unless `replace`.

    Replacing keeps the old key under `previous`, which enforcers keep accepting, so existing
    annotations stay valid until the webhook has re-signed them (rotation opens no window);
    `drop_previous` removes it once that is done. See docs/operations.md, "Signing-key rotation".
    """
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    existing = _read_secret(core, namespace, SIGNING_SECRET)
    if existing is not None:
        data = existing.data or {}
        current = base64.b64decode(data.get(SIGNING_SECRET_KEY) or b"")
        if drop_previous and current:
            if not data.get(SIGNING_PREVIOUS_KEY):
                return "kept"
            return _apply_secret(
                api_client, namespace, SIGNING_SECRET, "Opaque", {SIGNING_SECRET_KEY: current}, exact=True
            )
        if current and replace and key is not None and key != current:
            return _apply_secret(
                api_client,
                namespace,
                SIGNING_SECRET,
                "Opaque",
                {SIGNING_SECRET_KEY: key, SIGNING_PREVIOUS_KEY: current},
            )
        if current and not replace:
            if key is not None and key != current:
                logger.warning(
                    "Secret %s/%s already holds a different signing key; keeping it (pass --replace-signing-key "
                    "to overwrite it with the local signing.key)",
                    namespace,
                    SIGNING_SECRET,
                )
            return "kept"
    if key is None:
        raise InstallError(
            f"Secret {namespace}/{SIGNING_SECRET} has no data key '{SIGNING_SECRET_KEY}' and there is no local "
            "signing.key; run `python -m certs generate` first"
        )
    return _apply_secret(api_client, namespace, SIGNING_SECRET, "Opaque", {SIGNING_SECRET_KEY: key}, exact=True)


def inject_ca_bundle(api_client: Any, ca_pem: bytes) -> tuple[tuple[WebhookKind, str, Outcome], ...]:
    """Set caBundle on every webhook of both configurations named `nodeport-guard`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.AdmissionregistrationV1Api(api_client)
    bundle = base64.b64encode(ca_pem).decode()
    results: list[tuple[WebhookKind, str, Outcome]] = []
    for kind in WEBHOOK_KINDS:
        read, patch = (
            (api.read_mutating_webhook_configuration, api.patch_mutating_webhook_configuration)
            if kind == "MutatingWebhookConfiguration"
            else (api.read_validating_webhook_configuration, api.patch_validating_webhook_configuration)
        )
        try:
            current = api_client.sanitize_for_serialization(read(WEBHOOK_CONFIGURATION))
        except ApiException as exc:
            if exc.status == 404:
                raise InstallError(
                    f"{kind} {WEBHOOK_CONFIGURATION} does not exist; apply the manifests first "
                    "(`kubectl apply -k manifests/`)"
                ) from exc
            raise
        ops: list[dict[str, Any]] = []
        for index, webhook in enumerate(current.get("webhooks") or []):
            name = webhook["name"]
            if (webhook.get("clientConfig") or {}).get("caBundle") == bundle:
                results.append((kind, name, "unchanged"))
                continue
            # The test op makes the patch fail rather than hit the wrong webhook if the list changed.
            ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": name})
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle})
            results.append((kind, name, "updated"))
        if not current.get("webhooks"):
            logger.warning("%s %s has no webhooks; nothing to inject", kind, WEBHOOK_CONFIGURATION)
        if ops:
            patch(WEBHOOK_CONFIGURATION, ops)
            logger.info("injected caBundle into %s %s", kind, WEBHOOK_CONFIGURATION)
    return tuple(sorted(results))


def install(
    api_client: Any,
    namespace: str,
    tls: tuple[bytes, bytes, bytes] | None,
    signing_key: bytes | None,
    replace_signing_key: bool = False,
    drop_previous_signing_key: bool = False,
) -> InstallReport:
    """Install the signing key and, when `tls` = (cert, key, ca) is given, the TLS Secret and caBundles."""
    signing = apply_signing_secret(api_client, namespace, signing_key, replace_signing_key, drop_previous_signing_key)
    if tls is None:
        return InstallReport(tls_secret=None, signing_secret=signing, ca_bundles=())
    cert_pem, key_pem, ca_pem = tls
    tls_outcome = apply_tls_secret(api_client, namespace, cert_pem, key_pem, ca_pem)
    bundles = inject_ca_bundle(api_client, ca_pem)
    return InstallReport(tls_secret=tls_outcome, signing_secret=signing, ca_bundles=bundles)


def _read_secret(core: Any, namespace: str, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise InstallError(
                f"not allowed to read Secret {namespace}/{name}; use a kubeconfig that may manage Secrets there"
            ) from exc
        raise


def _apply_secret(
    api_client: Any, namespace: str, name: str, secret_type: str, data: dict[str, bytes], exact: bool = False
) -> Outcome:
    """Create or update a Secret; with `exact`, data keys not in `data` are removed too."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    encoded: dict[str, bytes | str] = {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}
    existing = _read_secret(core, namespace, name)
    if existing is None:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(LABELS)),
            type=secret_type,
            data=encoded,
        )
        try:
            core.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                raise InstallError(
                    f"namespace {namespace} does not exist; apply the manifests first (`kubectl apply -k manifests/`)"
                ) from exc
            raise
        logger.info("created Secret %s/%s", namespace, name)
        return "created"
    if existing.type != secret_type:
        raise InstallError(
            f"Secret {namespace}/{name} has type {existing.type}, expected {secret_type}; "
            f"delete it (`kubectl delete secret -n {namespace} {name}`) and run install again"
        )
    current = existing.data or {}
    stale = sorted(set(current) - set(encoded)) if exact else []
    if not stale and all(current.get(k) == v for k, v in encoded.items()):
        return "unchanged"
    patch_data: dict[str, bytes | str | None] = {**encoded, **dict.fromkeys(stale)}  # null removes a key
    # Merge patch with the resourceVersion: fails (409) instead of overwriting a concurrent change.
    core.patch_namespaced_secret(
        name,
        namespace,
        {"metadata": {"resourceVersion": existing.metadata.resource_version, "labels": LABELS}, "data": patch_data},
    )
    logger.info("updated Secret %s/%s", namespace, name)
    return "updated"
