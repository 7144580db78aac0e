"""Enforcer configuration from the environment and flags (pure: mapping in, value out)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BackendChoice = Literal["auto", "legacy", "nft"]
DEFAULT_NODEPORT_RANGE = (30000, 32767)


class SettingsError(ValueError):
    pass


def _object_ref(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    text = env.get(name, "")
    if not text:
        return None
    ns, _, obj = text.partition("/")
    if not ns or not obj or "/" in obj:
        raise SettingsError(f"{name}={text!r}: expected <namespace>/<name>")
    return ns, obj


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "false").strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("", "0", "false", "no"):
        return False
    raise SettingsError(f"{name}={env.get(name)!r}: expected true or false")


def parse_port_range(text: str, name: str = "NPG_NODEPORT_RANGE") -> tuple[int, int]:
    try:
        low_text, high_text = text.split("-", 1)
        low, high = int(low_text), int(high_text)
    except ValueError as exc:
        raise SettingsError(f"{name}={text!r}: expected LOW-HIGH, e.g. 30000-32767") from exc
    if not 1 <= low <= high <= 65535:
        raise SettingsError(f"{name}={text!r}: need 1 <= LOW <= HIGH <= 65535")
    return low, high


def parse_bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"NPG_METRICS_BIND={text!r}: expected HOST:PORT, e.g. 0.0.0.0:9911")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class EnforcerSettings:
    node_name: str
    public_keys_configmap: tuple[str, str] | None  # (namespace, name), read through the API
    public_keys_file: Path | None  # alternative for local runs: PEM public keys, current first
    kubeconfig: Path | None
    # The HMAC -> Ed25519 upgrade transition (docs/operations.md): only while on, the legacy
    # `hmac-sha256:` signatures are accepted and the legacy HMAC Secret (or file) is read.
    accept_legacy_hmac: bool = False
    legacy_hmac_secret: tuple[str, str] | None = None
    legacy_hmac_file: Path | None = None
    key_refresh_seconds: float = 30.0  # how often the trusted keys are re-read (rotation takes effect)
    nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.1
    backend: BackendChoice = "auto"
    clear_conntrack: bool = False
    metrics_bind: tuple[str, int] = ("0.0.0.0", 9911)  # noqa: S104 - hostNetwork pod, scraped by node IP
    xtables_lock: Path = Path("/run/xtables.lock")
    log_level: str = "INFO"
    # The node status Lease (enforcer/status.py): its namespace, the least time between two
    # writes and the heartbeat when nothing changes.
    status_namespace: str = "nodeport-guard"
    status_min_interval_seconds: float = 5.0
    status_heartbeat_seconds: float = 60.0
    # NPG_MODE=audit: the rollout switch, every protected NodePort of this node is audited (counted,
    # logged, not dropped) whatever the policies' modes. "enforce" (default): each policy's mode.
    audit_all: bool = False
    audit_log_seconds: float = 10.0  # period of the bounded would-drop log (NPG_AUDIT_LOG_SECONDS)
    # The canary (enforcer/canary.py): the canary Service's NodePort (0: off), how often, how many peers.
    canary_nodeport: int = 0
    canary_period_seconds: float = 10.0
    canary_peers: int = 2
    canary_timeout_seconds: float = 1.0

    @staticmethod
    def from_env(env: Mapping[str, str]) -> EnforcerSettings:
        for retired in ("NPG_SIGNING_KEY_SECRET", "NPG_SIGNING_KEY_FILE"):
            if env.get(retired):
                raise SettingsError(
                    f"{retired} is no longer read: enforcers verify Ed25519 signatures with public keys only. "
                    "Set NPG_PUBLIC_KEYS_CONFIGMAP=nodeport-guard/nodeport-guard-signing-public-keys instead; "
                    "during the upgrade from HMAC also NPG_ACCEPT_LEGACY_HMAC=true and NPG_LEGACY_HMAC_SECRET "
                    "(docs/operations.md, 'Upgrading from HMAC signatures')"
                )
        configmap = _object_ref(env, "NPG_PUBLIC_KEYS_CONFIGMAP")
        keys_file = env.get("NPG_PUBLIC_KEYS_FILE", "")
        if configmap is None and not keys_file:
            raise SettingsError(
                "set NPG_PUBLIC_KEYS_CONFIGMAP=<namespace>/<name> "
                "(in cluster: nodeport-guard/nodeport-guard-signing-public-keys) or NPG_PUBLIC_KEYS_FILE"
            )
        accept_legacy = _flag(env, "NPG_ACCEPT_LEGACY_HMAC")
        legacy_secret = _object_ref(env, "NPG_LEGACY_HMAC_SECRET")
        legacy_file = env.get("NPG_LEGACY_HMAC_FILE", "")
        if accept_legacy and legacy_secret is None and not legacy_file:
            raise SettingsError(
                "NPG_ACCEPT_LEGACY_HMAC=true needs the old HMAC key: set NPG_LEGACY_HMAC_SECRET="
                "nodeport-guard/nodeport-guard-signing-key (or NPG_LEGACY_HMAC_FILE)"
            )
        backend = env.get("NPG_BACKEND", "auto")
        if backend not in ("auto", "legacy", "nft"):
            raise SettingsError(f"NPG_BACKEND={backend!r}: expected auto, legacy or nft")
        try:
            resync = float(env.get("NPG_RESYNC_SECONDS", "30"))
            debounce = float(env.get("NPG_DEBOUNCE_SECONDS", "0.1"))
            key_refresh = float(env.get("NPG_KEY_REFRESH_SECONDS", "30"))
        except ValueError as exc:
            raise SettingsError(f"NPG_RESYNC_SECONDS/NPG_DEBOUNCE_SECONDS/NPG_KEY_REFRESH_SECONDS: {exc}") from exc
        if resync <= 0 or debounce < 0:
            raise SettingsError("NPG_RESYNC_SECONDS must be > 0 and NPG_DEBOUNCE_SECONDS >= 0")
        if key_refresh <= 0:
            raise SettingsError(f"NPG_KEY_REFRESH_SECONDS={key_refresh}: must be > 0 (seconds between key re-reads)")
        try:
            status_min = float(env.get("NPG_STATUS_MIN_INTERVAL_SECONDS", "5"))
            status_beat = float(env.get("NPG_STATUS_HEARTBEAT_SECONDS", "60"))
        except ValueError as exc:
            raise SettingsError(f"NPG_STATUS_MIN_INTERVAL_SECONDS/NPG_STATUS_HEARTBEAT_SECONDS: {exc}") from exc
        if not 1 <= status_min <= status_beat:
            raise SettingsError(
                f"NPG_STATUS_MIN_INTERVAL_SECONDS={status_min}, NPG_STATUS_HEARTBEAT_SECONDS={status_beat}: "
                "need 1 <= min interval <= heartbeat (defaults 5 and 60; the apiserver load is 1/min interval per node)"
            )
        kubeconfig = env.get("NPG_KUBECONFIG")
        mode = env.get("NPG_MODE", "enforce")
        if mode not in ("enforce", "audit"):
            raise SettingsError(
                f"NPG_MODE={mode!r}: expected enforce (each policy's mode, the default) or audit "
                "(audit every NodePort on this node: count and log, drop nothing)"
            )
        try:
            audit_log_seconds = float(env.get("NPG_AUDIT_LOG_SECONDS", "10"))
        except ValueError as exc:
            raise SettingsError(f"NPG_AUDIT_LOG_SECONDS: {exc}") from exc
        if audit_log_seconds <= 0:
            raise SettingsError(f"NPG_AUDIT_LOG_SECONDS={audit_log_seconds}: must be > 0")
        canary = _canary(env)
        return EnforcerSettings(
            node_name=env.get("NPG_NODE_NAME", ""),
            public_keys_configmap=configmap,
            public_keys_file=Path(keys_file) if keys_file else None,
            kubeconfig=Path(kubeconfig) if kubeconfig else None,
            accept_legacy_hmac=accept_legacy,
            legacy_hmac_secret=legacy_secret if accept_legacy else None,
            legacy_hmac_file=Path(legacy_file) if accept_legacy and legacy_file else None,
            key_refresh_seconds=key_refresh,
            nodeport_range=parse_port_range(env.get("NPG_NODEPORT_RANGE", "30000-32767")),
            resync_seconds=resync,
            debounce_seconds=debounce,
            backend=backend,  # type: ignore[arg-type]
            clear_conntrack=env.get("NPG_CLEAR_CONNTRACK", "false").lower() in ("1", "true", "yes"),
            metrics_bind=parse_bind(env.get("NPG_METRICS_BIND", "0.0.0.0:9911")),
            xtables_lock=Path(env.get("NPG_XTABLES_LOCK", "/run/xtables.lock")),
            log_level=env.get("NPG_LOG_LEVEL", "INFO"),
            status_namespace=env.get("NPG_STATUS_NAMESPACE", "nodeport-guard"),
            status_min_interval_seconds=status_min,
            status_heartbeat_seconds=status_beat,
            audit_all=mode == "audit",
            audit_log_seconds=audit_log_seconds,
            canary_nodeport=canary[0],
            canary_period_seconds=canary[1],
            canary_peers=canary[2],
            canary_timeout_seconds=canary[3],
        )


def _canary(env: Mapping[str, str]) -> tuple[int, float, int, float]:
    """NPG_CANARY_NODEPORT (0: no canary), NPG_CANARY_PERIOD_SECONDS, NPG_CANARY_PEERS, NPG_CANARY_TIMEOUT_SECONDS."""
    try:
        port = int(env.get("NPG_CANARY_NODEPORT", "0"))
        period = float(env.get("NPG_CANARY_PERIOD_SECONDS", "10"))
        peers = int(env.get("NPG_CANARY_PEERS", "2"))
        timeout = float(env.get("NPG_CANARY_TIMEOUT_SECONDS", "1"))
    except ValueError as exc:
        raise SettingsError(f"NPG_CANARY_*: {exc}") from exc
    if not 0 <= port <= 65535 or peers < 1 or not 0 < timeout < period:
        raise SettingsError(
            f"NPG_CANARY_NODEPORT={port}, NPG_CANARY_PEERS={peers}, NPG_CANARY_TIMEOUT_SECONDS={timeout}, "
            f"NPG_CANARY_PERIOD_SECONDS={period}: need a port (0 = off), >= 1 peer and 0 < timeout < period "
            "(defaults 0, 2, 1 and 10; the manifests set the port of Service nodeport-guard-canary)"
        )
    return port, period, peers, timeout
