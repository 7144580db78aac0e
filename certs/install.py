"""Put certificates and the signing keys into a cluster: Secrets, the public-key ConfigMap, caBundles (Kubernetes I/O).

The Ed25519 private key goes into Secret `nodeport-guard-signing-private-key`, which only the
webhook mounts; its public half (and, during a rotation, the previous one) into ConfigMap
`nodeport-guard-signing-public-keys`, which the enforcers and the kubectl plugin read.

Everything here is idempotent: objects are created when missing, patched when different and
left alone when equal, so `install` and `rotate` can be re-run safely.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contract import field_managers
from contract.signing import (
    PUBLIC_KEYS_CURRENT,
    PUBLIC_KEYS_PREVIOUS,
    PublicKey,
    Signer,
    SigningKeyError,
    parse_private_key_pem,
    public_keys_from_data,
)

logger = logging.getLogger(__name__)

# Object names, not secret values.
TLS_SECRET = "nodeport-guard-webhook-tls"  # noqa: S105
SIGNING_SECRET = "nodeport-guard-signing-private-key"  # noqa: S105
SIGNING_SECRET_KEY = "key"  # noqa: S105
PUBLIC_KEYS_CONFIGMAP = "nodeport-guard-signing-public-keys"
# The HMAC key of versions before Ed25519: read by enforcers only during the upgrade transition;
# never written here (docs/operations.md, "Upgrading from HMAC signatures").
LEGACY_HMAC_SECRET = "nodeport-guard-signing-key"  # noqa: S105
WEBHOOK_CONFIGURATION = "nodeport-guard"
LABELS = {"app.kubernetes.io/part-of": "nodeport-guard", "app.kubernetes.io/managed-by": "nodeport-guard-certs"}

Outcome = Literal["created", "updated", "unchanged", "kept", "skipped"]
WebhookKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
WEBHOOK_KINDS: tuple[WebhookKind, ...] = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class InstallError(RuntimeError):
    """The cluster is not in a state we can install into; the message names the object and the fix."""


@dataclass(frozen=True, slots=True)
class InstallReport:
    tls_secret: Outcome | None
    signing_secret: Outcome
    public_keys: Outcome
    key_ids: tuple[str, ...]  # trusted after install: current first, then previous
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


def apply_signing_keys(
    api_client: Any,
    namespace: str,
    signer: Signer | None,
    replace: bool,
    drop_previous: bool = False,
    public_only: bool = False,
) -> tuple[Outcome, Outcome, tuple[str, ...]]:
    """Install the signing pair: (Secret outcome, ConfigMap outcome, trusted key ids).

    An existing private key is kept unless `replace`. Replacing publishes the new public key
    first, with the old one kept under `previous` (enforcers accept both), and only then writes
    the new private key; the webhook signs with it from its next restart, and its reconciler
    re-signs every annotation (rotation opens no window). `drop_previous` removes the previous
    public key once that is done. `public_only` publishes the public key and leaves the
    Secret alone ("skipped"): the first step of the upgrade from HMAC, so that enforcers trust
    the key before any webhook can sign with it. See docs/operations.md, "Signing-key rotation"
    and "Upgrading from HMAC signatures".
    """
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    existing = _read_secret(core, namespace, SIGNING_SECRET)
    installed: Signer | None = None
    kept_other = False
    if existing is not None and (existing.data or {}).get(SIGNING_SECRET_KEY):
        pem = base64.b64decode(existing.data[SIGNING_SECRET_KEY])
        try:
            installed = parse_private_key_pem(pem, f"Secret {namespace}/{SIGNING_SECRET} key {SIGNING_SECRET_KEY!r}")
        except SigningKeyError as exc:
            if not replace:
                raise InstallError(f"{exc}; or pass --replace-signing-key to overwrite it") from exc
    if installed is not None and not replace:
        if signer is not None and signer.public != installed.public:
            logger.warning(
                "Secret %s/%s already holds a different signing key (key id %s, local %s); keeping it "
                "(pass --replace-signing-key to rotate to the local signing.pem)",
                namespace,
                SIGNING_SECRET,
                installed.public.key_id,
                signer.public.key_id,
            )
            kept_other = True
        signer = installed
    if signer is None:
        raise InstallError(
            f"Secret {namespace}/{SIGNING_SECRET} has no data key '{SIGNING_SECRET_KEY}' and there is no local "
            "signing.pem; run `python -m certs signing-key --dir DIR` first"
        )
    published = _read_public_keys(core, namespace)
    keys: list[PublicKey] = [signer.public]
    if not drop_previous:
        # The key that signed the stored annotations stays trusted until they are re-signed.
        old = installed.public if installed is not None else (published[0] if published else None)
        if old is not None and old != signer.public:
            keys.append(old)
        elif len(published) > 1 and published[0] == signer.public:
            keys.append(published[1])  # a rotation still in progress: keep its previous key
    data = {PUBLIC_KEYS_CURRENT: keys[0].pem().decode()}
    if len(keys) > 1:
        data[PUBLIC_KEYS_PREVIOUS] = keys[1].pem().decode()
    public = _apply_configmap(api_client, namespace, PUBLIC_KEYS_CONFIGMAP, data)  # public key first
    if public_only:
        secret: Outcome = "skipped"  # noqa: S105 - an outcome, not a secret
    elif installed is not None and installed.public == signer.public:
        secret = "kept" if kept_other else "unchanged"
    else:
        secret = _apply_secret(
            api_client, namespace, SIGNING_SECRET, "Opaque", {SIGNING_SECRET_KEY: signer.private_pem()}, exact=True
        )
    return secret, public, tuple(k.key_id for k in keys)


def _read_public_keys(core: Any, namespace: str) -> tuple[PublicKey, ...]:
    from kubernetes.client.exceptions import ApiException

    try:
        data = core.read_namespaced_config_map(PUBLIC_KEYS_CONFIGMAP, namespace).data or {}
    except ApiException as exc:
        if exc.status == 404:
            return ()
        raise
    try:
        return public_keys_from_data(data, f"ConfigMap {namespace}/{PUBLIC_KEYS_CONFIGMAP}")
    except SigningKeyError:
        logger.warning("ConfigMap %s/%s holds no usable public key; rewriting it", namespace, PUBLIC_KEYS_CONFIGMAP)
        return ()


def _apply_configmap(api_client: Any, namespace: str, name: str, data: dict[str, str]) -> Outcome:
    """Create or update a ConfigMap so that its data is exactly `data`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    existing: Any
    try:
        existing = core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        existing = None
    if existing is None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(LABELS)), data=data
        )
        try:
            core.create_namespaced_config_map(namespace, body, field_manager=field_managers.CERTS)
        except ApiException as exc:
            if exc.status == 404:
                raise InstallError(
                    f"namespace {namespace} does not exist; apply the manifests first (`kubectl apply -k manifests/`)"
                ) from exc
            raise
        logger.info("created ConfigMap %s/%s", namespace, name)
        return "created"
    current = existing.data or {}
    if current == data:
        return "unchanged"
    patch_data: dict[str, str | None] = {**data, **dict.fromkeys(sorted(set(current) - set(data)))}
    core.patch_namespaced_config_map(
        name,
        namespace,
        {"metadata": {"resourceVersion": existing.metadata.resource_version, "labels": LABELS}, "data": patch_data},
        field_manager=field_managers.CERTS,
    )
    logger.info("updated ConfigMap %s/%s", namespace, name)
    return "updated"


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
            patch(WEBHOOK_CONFIGURATION, ops, field_manager=field_managers.CERTS)
            logger.info("injected caBundle into %s %s", kind, WEBHOOK_CONFIGURATION)
    return tuple(sorted(results))


def install(
    api_client: Any,
    namespace: str,
    tls: tuple[bytes, bytes, bytes] | None,
    signing_key: Signer | None,
    replace_signing_key: bool = False,
    drop_previous_signing_key: bool = False,
    public_key_only: bool = False,
) -> InstallReport:
    """Install the signing pair and, when `tls` = (cert, key, ca) is given, the TLS Secret and caBundles."""
    signing, public, key_ids = apply_signing_keys(
        api_client, namespace, signing_key, replace_signing_key, drop_previous_signing_key, public_key_only
    )
    if tls is None or public_key_only:
        return InstallReport(None, signing, public, key_ids, ca_bundles=())
    cert_pem, key_pem, ca_pem = tls
    tls_outcome = apply_tls_secret(api_client, namespace, cert_pem, key_pem, ca_pem)
    bundles = inject_ca_bundle(api_client, ca_pem)
    return InstallReport(tls_outcome, signing, public, key_ids, ca_bundles=bundles)


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
            core.create_namespaced_secret(namespace, body, field_manager=field_managers.CERTS)
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
        field_manager=field_managers.CERTS,
    )
    logger.info("updated Secret %s/%s", namespace, name)
    return "updated"
