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
    signing_key_secret: tuple[str, str] | None  # (namespace, name), read through the API
    signing_key_file: Path | None  # alternative for local runs
    kubeconfig: Path | None
    nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.1
    backend: BackendChoice = "auto"
    clear_conntrack: bool = False
    metrics_bind: tuple[str, int] = ("0.0.0.0", 9911)  # noqa: S104 - hostNetwork pod, scraped by node IP
    xtables_lock: Path = Path("/run/xtables.lock")
    log_level: str = "INFO"

    @staticmethod
    def from_env(env: Mapping[str, str]) -> EnforcerSettings:
        secret = env.get("NPG_SIGNING_KEY_SECRET", "")
        key_file = env.get("NPG_SIGNING_KEY_FILE", "")
        if not secret and not key_file:
            raise SettingsError(
                "set NPG_SIGNING_KEY_SECRET=<namespace>/<name> (in cluster: nodeport-guard/nodeport-guard-signing-key) "
                "or NPG_SIGNING_KEY_FILE"
            )
        secret_ref: tuple[str, str] | None = None
        if secret:
            ns, _, name = secret.partition("/")
            if not ns or not name:
                raise SettingsError(f"NPG_SIGNING_KEY_SECRET={secret!r}: expected <namespace>/<name>")
            secret_ref = (ns, name)
        backend = env.get("NPG_BACKEND", "auto")
        if backend not in ("auto", "legacy", "nft"):
            raise SettingsError(f"NPG_BACKEND={backend!r}: expected auto, legacy or nft")
        try:
            resync = float(env.get("NPG_RESYNC_SECONDS", "30"))
            debounce = float(env.get("NPG_DEBOUNCE_SECONDS", "0.1"))
        except ValueError as exc:
            raise SettingsError(f"NPG_RESYNC_SECONDS/NPG_DEBOUNCE_SECONDS: {exc}") from exc
        if resync <= 0 or debounce < 0:
            raise SettingsError("NPG_RESYNC_SECONDS must be > 0 and NPG_DEBOUNCE_SECONDS >= 0")
        kubeconfig = env.get("NPG_KUBECONFIG")
        return EnforcerSettings(
            node_name=env.get("NPG_NODE_NAME", ""),
            signing_key_secret=secret_ref,
            signing_key_file=Path(key_file) if key_file else None,
            kubeconfig=Path(kubeconfig) if kubeconfig else None,
            nodeport_range=parse_port_range(env.get("NPG_NODEPORT_RANGE", "30000-32767")),
            resync_seconds=resync,
            debounce_seconds=debounce,
            backend=backend,  # type: ignore[arg-type]
            clear_conntrack=env.get("NPG_CLEAR_CONNTRACK", "false").lower() in ("1", "true", "yes"),
            metrics_bind=parse_bind(env.get("NPG_METRICS_BIND", "0.0.0.0:9911")),
            xtables_lock=Path(env.get("NPG_XTABLES_LOCK", "/run/xtables.lock")),
            log_level=env.get("NPG_LOG_LEVEL", "INFO"),
        )
