"""The chart's certificate hooks, run inside the cluster in the product image (I/O).

Like ingress-nginx's kube-webhook-certgen: a pre-install/pre-upgrade Job makes the CA, the serving
certificate and the Ed25519 signing key in the pod's memory and writes them only into Secrets
(`bootstrap`); a post-install/post-upgrade Job copies the CA into both webhook configurations
(`inject`). No key ever passes through Helm values or `helm get manifest`. Both are idempotent:
what exists is kept (rotation stays `python -m certs rotate`, docs/operations.md).
"""

from __future__ import annotations

import base64
import datetime
import logging
from typing import Any

from certs.install import (
    SIGNING_SECRET,
    TLS_SECRET,
    InstallError,
    _read_secret,
    apply_signing_keys,
    apply_tls_secret,
    inject_ca_bundle,
)
from certs.pki import (
    CA_DAYS,
    SERVICE_NAME,
    SERVING_DAYS,
    build_ca,
    build_signing_key,
    issue_serving_cert,
    service_dns_names,
)

logger = logging.getLogger(__name__)


def incluster_api_client() -> Any:
    """An ApiClient from the pod's ServiceAccount (a new one each call; nothing global)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def bootstrap(api_client: Any, namespace: str, now: datetime.datetime, tls: bool = True) -> tuple[str, str]:
    """Create the TLS Secret (unless `tls` is False: cert-manager's) and the signing key pair unless they
    exist: (tls outcome, signing outcome)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    existing = _read_secret(core, namespace, TLS_SECRET) if tls else None
    if not tls:
        tls_outcome = "skipped"
    elif existing is not None and (existing.data or {}).get("ca.crt") and (existing.data or {}).get("tls.key"):
        tls_outcome = "kept"
    else:
        ca = build_ca(now, days=CA_DAYS)
        serving = issue_serving_cert(ca, now, list(service_dns_names(SERVICE_NAME, namespace)), [], days=SERVING_DAYS)
        tls_outcome = apply_tls_secret(api_client, namespace, serving.cert_pem(), serving.key_pem(), ca.cert_pem())
    # None keeps an installed private key; a new one is made only for a first install.
    signer = None if _read_secret(core, namespace, SIGNING_SECRET) is not None else build_signing_key()
    signing, _public, key_ids = apply_signing_keys(api_client, namespace, signer, replace=False)
    logger.info(
        "TLS Secret %s/%s: %s; signing key %s (trusted: %s)", namespace, TLS_SECRET, tls_outcome, signing, key_ids
    )
    return tls_outcome, signing


def inject(api_client: Any, namespace: str) -> tuple[tuple[str, str, str], ...]:
    """Copy the CA of the TLS Secret into both webhook configurations."""
    from kubernetes import client

    existing = _read_secret(client.CoreV1Api(api_client), namespace, TLS_SECRET)
    ca_b64 = (existing.data or {}).get("ca.crt") if existing is not None else None
    if not ca_b64:
        raise InstallError(f"Secret {namespace}/{TLS_SECRET} has no ca.crt; run `python -m certs bootstrap` first")
    results = inject_ca_bundle(api_client, base64.b64decode(ca_b64))
    for kind, name, outcome in results:
        logger.info("%s nodeport-guard webhook %s caBundle: %s", kind, name, outcome)
    return results
