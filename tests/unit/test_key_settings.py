"""Key settings of both components (pure): public keys for the enforcer, the transition switch, the webhook's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.signing import Signer
from enforcer.settings import EnforcerSettings
from enforcer.settings import SettingsError as EnforcerSettingsError
from webhook.settings import SettingsError, read_signing_key

PUBLIC = {"NPG_PUBLIC_KEYS_CONFIGMAP": "nodeport-guard/nodeport-guard-signing-public-keys"}


def test_the_enforcer_reads_public_keys_and_no_legacy_key_by_default() -> None:
    settings = EnforcerSettings.from_env(PUBLIC)
    assert settings.public_keys_configmap == ("nodeport-guard", "nodeport-guard-signing-public-keys")
    assert not settings.accept_legacy_hmac and settings.legacy_hmac_secret is None
    assert settings.key_refresh_seconds == 30.0
    # A legacy reference without the switch is ignored: the old key is read only during the transition.
    ignored = EnforcerSettings.from_env(
        {**PUBLIC, "NPG_LEGACY_HMAC_SECRET": "nodeport-guard/nodeport-guard-signing-key"}
    )
    assert ignored.legacy_hmac_secret is None


def test_the_transition_needs_the_switch_and_the_old_key() -> None:
    on = EnforcerSettings.from_env(
        {
            **PUBLIC,
            "NPG_ACCEPT_LEGACY_HMAC": "true",
            "NPG_LEGACY_HMAC_SECRET": "nodeport-guard/nodeport-guard-signing-key",
        }
    )
    assert on.accept_legacy_hmac and on.legacy_hmac_secret == ("nodeport-guard", "nodeport-guard-signing-key")
    with pytest.raises(EnforcerSettingsError, match="NPG_ACCEPT_LEGACY_HMAC=true needs the old HMAC key"):
        EnforcerSettings.from_env({**PUBLIC, "NPG_ACCEPT_LEGACY_HMAC": "true"})
    with pytest.raises(EnforcerSettingsError, match=r"NPG_ACCEPT_LEGACY_HMAC='maybe': expected true or false"):
        EnforcerSettings.from_env({**PUBLIC, "NPG_ACCEPT_LEGACY_HMAC": "maybe"})


def test_the_old_hmac_settings_are_refused_with_their_replacements() -> None:
    for old in ("NPG_SIGNING_KEY_SECRET", "NPG_SIGNING_KEY_FILE"):
        with pytest.raises(EnforcerSettingsError, match=f"{old} is no longer read.*NPG_PUBLIC_KEYS_CONFIGMAP"):
            EnforcerSettings.from_env({**PUBLIC, old: "nodeport-guard/nodeport-guard-signing-key"})
    with pytest.raises(EnforcerSettingsError, match="set NPG_PUBLIC_KEYS_CONFIGMAP"):
        EnforcerSettings.from_env({})
    with pytest.raises(EnforcerSettingsError, match="NPG_PUBLIC_KEYS_CONFIGMAP='x': expected <namespace>/<name>"):
        EnforcerSettings.from_env({"NPG_PUBLIC_KEYS_CONFIGMAP": "x"})
    with pytest.raises(EnforcerSettingsError, match=r"NPG_KEY_REFRESH_SECONDS=0\.0: must be > 0"):
        EnforcerSettings.from_env({**PUBLIC, "NPG_KEY_REFRESH_SECONDS": "0"})


def test_the_webhook_reads_an_ed25519_private_key_and_refuses_the_legacy_one(tmp_path: Path) -> None:
    signer = Signer.from_seed(b"s" * 32)
    good = tmp_path / "key"
    good.write_bytes(signer.private_pem())
    assert read_signing_key(good).public == signer.public
    legacy = tmp_path / "legacy"
    legacy.write_bytes(b"k" * 32)
    with pytest.raises(SettingsError, match=r"NPG_SIGNING_KEY_FILE=.*legacy: not a PEM Ed25519 private key"):
        read_signing_key(legacy)
    with pytest.raises(SettingsError, match=r"cannot read it.*mount Secret nodeport-guard-signing-private-key"):
        read_signing_key(tmp_path / "missing")
    public_only = tmp_path / "pub"
    public_only.write_bytes(signer.public.pem())
    with pytest.raises(SettingsError, match="not an unencrypted PEM private key"):
        read_signing_key(public_only)
