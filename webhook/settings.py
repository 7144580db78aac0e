"""Webhook configuration read from the environment (pure: takes a mapping, returns a value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contract.signing import Signer, SigningKeyError, parse_private_key_pem


class SettingsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    signing_key_file: Path
    kubeconfig: Path | None = None
    max_cidrs_per_policy: int = 1000
    max_nodeports_per_policy: int = 1000
    max_doors_per_policy: int = 1000
    reconcile: bool = True
    lease_namespace: str | None = None
    pod_name: str = "nodeport-guard-webhook"
    resync_seconds: float = 60.0
    max_body_bytes: int = 3 * 1024 * 1024
    log_level: str = "INFO"
    # Namespaces the webhook configurations exclude: the reconciler leaves their policies alone too,
    # so nodeport-guard manages exactly the policies the webhook admits.
    excluded_namespaces: tuple[str, ...] = ("kube-system", "nodeport-guard")

    @staticmethod
    def from_env(env: Mapping[str, str]) -> WebhookSettings:
        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r} is not an integer") from exc
            if value <= 0:
                raise SettingsError(f"{name}={raw!r} must be positive")
            return value

        key_file = env.get("NPG_SIGNING_KEY_FILE")
        if not key_file:
            raise SettingsError(
                "NPG_SIGNING_KEY_FILE is not set: point it at the Ed25519 private key "
                "(Secret nodeport-guard-signing-private-key, created by `python -m certs install`)"
            )
        kubeconfig = env.get("NPG_KUBECONFIG")
        return WebhookSettings(
            signing_key_file=Path(key_file),
            kubeconfig=Path(kubeconfig) if kubeconfig else None,
            max_cidrs_per_policy=integer("NPG_MAX_CIDRS_PER_POLICY", 1000),
            max_nodeports_per_policy=integer("NPG_MAX_NODEPORTS_PER_POLICY", 1000),
            max_doors_per_policy=integer("NPG_MAX_DOORS_PER_POLICY", 1000),
            reconcile=env.get("NPG_RECONCILE", "true").lower() not in ("0", "false", "no"),
            lease_namespace=env.get("NPG_LEASE_NAMESPACE") or None,
            pod_name=env.get("NPG_POD_NAME") or "nodeport-guard-webhook",
            resync_seconds=float(integer("NPG_RESYNC_SECONDS", 60)),
            max_body_bytes=integer("NPG_MAX_BODY_BYTES", 3 * 1024 * 1024),
            log_level=env.get("NPG_LOG_LEVEL", "INFO"),
            excluded_namespaces=tuple(
                sorted(
                    ns.strip()
                    for ns in env.get("NPG_EXCLUDED_NAMESPACES", "kube-system,nodeport-guard").split(",")
                    if ns.strip()
                )
            ),
        )


def read_signing_key(path: Path) -> Signer:
    """The webhook's Ed25519 signer from the mounted private-key Secret (PKCS#8 PEM)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"NPG_SIGNING_KEY_FILE={path}: cannot read it ({exc.strerror}); "
            "mount Secret nodeport-guard-signing-private-key (created by `python -m certs install`)"
        ) from exc
    try:
        return parse_private_key_pem(pem, f"NPG_SIGNING_KEY_FILE={path}")
    except SigningKeyError as exc:
        raise SettingsError(str(exc)) from exc
