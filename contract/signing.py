"""Annotation signing keys: the webhook's Ed25519 signer and the verifiers' public-key sets (pure).

Only stdlib and `cryptography`; no I/O (callers pass bytes in), so the enforcer and the
kubectl plugin import it as well as the webhook. The signature format (docs/annotation.md):

    ed25519:<key id>:<base64 of the 64-byte Ed25519 signature over the exact UTF-8 bytes>

The key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key. It lets a
verifier pick the key without trying each, and names the key in every error message.

The legacy form `hmac-sha256:<hex>` (contract before issue 14) is verified only when the
caller passes the legacy HMAC keys, which the enforcer does only during the documented upgrade
transition (`NPG_ACCEPT_LEGACY_HMAC=true`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519_SCHEME = "ed25519"
LEGACY_HMAC_SCHEME = "hmac-sha256"
KEY_ID_HEX_DIGITS = 16
# Data keys of the public-key ConfigMap (nodeport-guard-signing-public-keys), PEM text each.
PUBLIC_KEYS_CURRENT = "current"
PUBLIC_KEYS_PREVIOUS = "previous"
_SIGNATURE_BYTES = 64
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
_FORGED = "signature does not match (forged, edited, or signed with another key)"


class SigningKeyError(ValueError):
    """A key is unusable; the message names it (`what`) and the fix."""


def key_id(raw_public_key: bytes) -> str:
    """The short, stable name of a public key: 16 hex digits of SHA-256 over its 32 raw bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()[:KEY_ID_HEX_DIGITS]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One trusted Ed25519 public key; equal when the raw bytes are equal."""

    key_id: str
    raw: bytes
    key: Ed25519PublicKey = field(compare=False, hash=False, repr=False)

    @staticmethod
    def from_key(key: Ed25519PublicKey) -> PublicKey:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(key_id=key_id(raw), raw=raw, key=key)

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class Signer:
    """The webhook's private key. Ed25519 signatures are deterministic: same value, same signature."""

    private_key: Ed25519PrivateKey = field(compare=False, repr=False)
    public: PublicKey

    @staticmethod
    def generate() -> Signer:
        return Signer.from_key(Ed25519PrivateKey.generate())

    @staticmethod
    def from_seed(seed: bytes) -> Signer:
        """A fixed key from a 32-byte seed: for tests, benchmarks and documented examples only."""
        return Signer.from_key(Ed25519PrivateKey.from_private_bytes(seed))

    @staticmethod
    def from_key(key: Ed25519PrivateKey) -> Signer:
        return Signer(private_key=key, public=PublicKey.from_key(key.public_key()))

    def sign(self, data: bytes) -> str:
        signature = base64.b64encode(self.private_key.sign(data)).decode("ascii")
        return f"{ED25519_SCHEME}:{self.public.key_id}:{signature}"

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def verifier(self) -> VerifierKeys:
        """A key set trusting only this signer (what the webhook checks its own output with)."""
        return VerifierKeys((self.public,))


def signature_key_id(signature: str) -> str | None:
    """The key id an `ed25519:` signature names (unverified), or None for any other form."""
    scheme, _, rest = signature.partition(":")
    if scheme != ED25519_SCHEME:
        return None
    kid, sep, _ = rest.partition(":")
    return kid if sep else None


def legacy_hmac_signature(key: bytes, data: bytes) -> str:
    """The pre-Ed25519 signature string `hmac-sha256:<hex>` (read during the upgrade only)."""
    return f"{LEGACY_HMAC_SCHEME}:{hmac.new(key, data, hashlib.sha256).hexdigest()}"


@dataclass(frozen=True, slots=True)
class VerifierKeys:
    """What a verifier trusts: Ed25519 public keys (current first, then previous during a
    rotation) and, only during the HMAC upgrade transition, the legacy HMAC keys."""

    public_keys: tuple[PublicKey, ...]
    legacy_hmac_keys: tuple[bytes, ...] = field(default=(), repr=False)

    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.public_keys)

    def problem(self, data: bytes, signature: str) -> str | None:
        """None when `signature` is valid for `data` under one of the trusted keys, else why not."""
        scheme, _, rest = signature.partition(":")
        if scheme == ED25519_SCHEME:
            return self._ed25519_problem(data, rest)
        if scheme == LEGACY_HMAC_SCHEME:
            if not self.legacy_hmac_keys:
                return (
                    "signed with the legacy hmac-sha256 scheme, accepted only during the upgrade to Ed25519 "
                    "(enforcer setting NPG_ACCEPT_LEGACY_HMAC=true); the webhook's reconciler re-signs it with Ed25519"
                )
            if any(hmac.compare_digest(legacy_hmac_signature(k, data), signature) for k in self.legacy_hmac_keys):
                return None
            return _FORGED
        return f"unknown signature scheme {scheme[:32]!r}; expected {ED25519_SCHEME!r}"

    def _ed25519_problem(self, data: bytes, rest: str) -> str | None:
        kid, _, encoded = rest.partition(":")
        key = next((k for k in self.public_keys if k.key_id == kid), None)
        if key is None:
            trusted = ", ".join(self.key_ids()) or "none"
            return f"{_FORGED}: signed with key id {kid[:32]!r}, not one of the trusted keys ({trusted})"
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return f"{_FORGED}: the signature is not base64"
        if len(raw) != _SIGNATURE_BYTES:
            return f"{_FORGED}: the signature is {len(raw)} bytes, not {_SIGNATURE_BYTES}"
        if base64.b64encode(raw).decode("ascii") != encoded:
            return f"{_FORGED}: the signature is not in canonical base64"
        try:
            key.key.verify(raw, data)
        except InvalidSignature:
            return _FORGED
        return None

    def verify(self, data: bytes, signature: str) -> bool:
        return self.problem(data, signature) is None


def parse_private_key_pem(pem: bytes, what: str) -> Signer:
    """The Ed25519 signer in an unencrypted PKCS#8 PEM; `what` names the file or object in errors."""
    fix = "generate one with `python -m certs signing-key --dir DIR` and install it with `python -m certs install`"
    if b"-----BEGIN" not in pem:
        raise SigningKeyError(
            f"{what}: not a PEM Ed25519 private key ({len(pem)} raw bytes: a legacy HMAC key?); {fix}"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{what}: not an unencrypted PEM private key ({exc}); {fix}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{what}: key type {type(key).__name__}, not an Ed25519 private key; {fix}")
    return Signer.from_key(key)


def parse_public_keys_pem(pem: bytes, what: str) -> tuple[PublicKey, ...]:
    """Every Ed25519 public key (SubjectPublicKeyInfo PEM blocks) in `pem`, in order, duplicates dropped."""
    blocks = _PEM_PUBLIC.findall(pem)
    if not blocks:
        raise SigningKeyError(
            f"{what}: no PEM public key (-----BEGIN PUBLIC KEY-----) found; write it with `python -m certs install`"
        )
    keys: list[PublicKey] = []
    for i, block in enumerate(blocks):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise SigningKeyError(f"{what}: public key #{i + 1} is not valid PEM ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{what}: public key #{i + 1} has key type {type(key).__name__}, not Ed25519")
        parsed = PublicKey.from_key(key)
        if parsed not in keys:
            keys.append(parsed)
    return tuple(keys)


def public_keys_from_data(data: Mapping[str, str], what: str) -> tuple[PublicKey, ...]:
    """The trusted keys of the public-key ConfigMap's data: `current` (required), then `previous`."""
    if not data.get(PUBLIC_KEYS_CURRENT):
        raise SigningKeyError(f"{what} has no data key {PUBLIC_KEYS_CURRENT!r}; run `python -m certs install`")
    keys: list[PublicKey] = []
    for item in (PUBLIC_KEYS_CURRENT, PUBLIC_KEYS_PREVIOUS):
        text = data.get(item)
        if text:
            keys += [k for k in parse_public_keys_pem(text.encode(), f"{what} key {item!r}") if k not in keys]
    return tuple(keys)
