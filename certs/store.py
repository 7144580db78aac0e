"""The local certificate directory: file names, modes and atomic writes (I/O, no Kubernetes).

Files: ca.crt, ca.key, tls.crt, tls.key, signing.pem (the Ed25519 private key that signs
annotations) and signing.pub (its public half); during a CA rotation also ca-previous.crt (the
old CA, still trusted by the apiserver until `rotate --drop-previous-ca`). Keys are 0600 and the directory 0700. A
`signing.key` left by an older version is the legacy HMAC key; nothing here reads it.
Every file is written to a temporary file in the same directory and renamed over the old one,
so a reader (the webhook polls tls.crt/tls.key) never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from certs.pki import KeyPair, PkiError, parse_cert, parse_pair, verify_issued_by
from contract.signing import Signer, SigningKeyError, parse_private_key_pem

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_PREVIOUS = "ca-previous.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
SIGNING_KEY = "signing.pem"
SIGNING_PUBLIC_KEY = "signing.pub"
PUBLIC_MODE = 0o644
SECRET_MODE = 0o600


class StoreError(RuntimeError):
    """The certificate directory is missing a file or holds an unusable one."""


@dataclass(frozen=True, slots=True)
class CertsDir:
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def has_ca(self) -> bool:
        return self.file(CA_CERT).exists() or self.file(CA_KEY).exists()

    def read_ca(self) -> KeyPair:
        return self._read_pair(CA_CERT, CA_KEY, "CA")

    def read_ca_cert_pem(self) -> bytes:
        data = self._read(CA_CERT)
        parse_cert(data, f"{self.file(CA_CERT)}")
        return data

    def read_ca_bundle_pem(self) -> bytes:
        """What clients of the webhook must trust: ca.crt, then ca-previous.crt during a CA rotation."""
        bundle = self.read_ca_cert_pem()
        if self.file(CA_PREVIOUS).exists():
            previous = self._read(CA_PREVIOUS)
            parse_cert(previous, f"{self.file(CA_PREVIOUS)}")
            bundle = bundle.rstrip(b"\n") + b"\n" + previous
        return bundle

    def has_previous_ca(self) -> bool:
        return self.file(CA_PREVIOUS).exists()

    def write_previous_ca(self, cert_pem: bytes) -> None:
        self._ensure_dir()
        write_atomic(self.file(CA_PREVIOUS), cert_pem, PUBLIC_MODE)

    def drop_previous_ca(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.file(CA_PREVIOUS).unlink()

    def read_serving(self) -> KeyPair:
        pair = self._read_pair(TLS_CERT, TLS_KEY, "serving")
        try:
            verify_issued_by(pair.cert, parse_cert(self._read(CA_CERT), str(self.file(CA_CERT))))
        except PkiError as exc:
            fix = "re-issue it with `python -m certs rotate --force`"
            raise StoreError(f"{self.file(TLS_CERT)}: {exc}; {fix}") from exc
        return pair

    def read_signing_key(self) -> Signer | None:
        """The Ed25519 signing key pair, or None when the directory holds none yet."""
        path = self.file(SIGNING_KEY)
        if not path.exists():
            return None
        try:
            return parse_private_key_pem(self._read(SIGNING_KEY), str(path))
        except SigningKeyError as exc:
            raise StoreError(str(exc)) from exc

    def write_ca(self, ca: KeyPair) -> None:
        self._ensure_dir()
        write_atomic(self.file(CA_KEY), ca.key_pem(), SECRET_MODE)
        write_atomic(self.file(CA_CERT), ca.cert_pem(), PUBLIC_MODE)

    def write_serving(self, serving: KeyPair) -> None:
        # Key first: a poller that catches the new key with the old cert fails to load the pair
        # (mismatch) and retries, rather than serving a consistent-looking stale pair forever.
        self._ensure_dir()
        write_atomic(self.file(TLS_KEY), serving.key_pem(), SECRET_MODE)
        write_atomic(self.file(TLS_CERT), serving.cert_pem(), PUBLIC_MODE)

    def write_signing_key(self, signer: Signer) -> None:
        self._ensure_dir()
        write_atomic(self.file(SIGNING_KEY), signer.private_pem(), SECRET_MODE)
        write_atomic(self.file(SIGNING_PUBLIC_KEY), signer.public.pem(), PUBLIC_MODE)

    def _ensure_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _read(self, name: str) -> bytes:
        path = self.file(name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            fix = f"create it with `python -m certs generate --out {self.path}`"
            raise StoreError(f"{path} does not exist; {fix}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc

    def _read_pair(self, cert_name: str, key_name: str, what: str) -> KeyPair:
        try:
            return parse_pair(self._read(cert_name), self._read(key_name), f"{what} pair in {self.path}")
        except PkiError as exc:
            raise StoreError(str(exc)) from exc


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` via a temporary file and rename (readers see old or new)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Persist the rename itself, so a crash cannot leave the old name pointing nowhere.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    logger.debug("wrote %s (%d bytes, mode %o)", path, len(data), mode)
