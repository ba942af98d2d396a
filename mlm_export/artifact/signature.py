"""Ed25519 keys and signature checks over an artifact's manifest (the `cryptography` package); a leaf:
it knows bytes and keys, not artifacts (`artifact.sign` writes signatures, `Artifact.open` checks them).

sha256 in the manifest catches a graph that was corrupted, truncated or swapped by itself; whoever
can write the directory can also rewrite the manifest to match. The signature closes that gap:
it covers the manifest's exact bytes, and through their sha256 every file the manifest lists. An app
that holds the public key can refuse any artifact edited after it was signed.

`manifest.sig` is JSON: algorithm, the signer's public key and its fingerprint (informational
only: verification uses the key the caller trusts, never the one in the file), and the signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, SignatureError
from ..manifest import MANIFEST, SIGNATURE, path_inside
from ..publish import OutputFile

ALGORITHM = "ed25519"
KEY_HELP = ("Create a key pair with `mlm-export keygen KEY` or "
            "`openssl genpkey -algorithm ed25519 -out KEY && openssl pkey -in KEY -pubout -out KEY.pub`.")


@dataclass(frozen=True)
class SignatureInfo:
    path: Path
    fingerprint: str  # sha256 of the raw public key, first 16 hex digits

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "algorithm": ALGORITHM, "fingerprint": self.fingerprint}


def crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise ConfigError("signing needs the cryptography package: pip install 'mlm-export[sign]'") from exc
    return serialization, ed25519


def fingerprint(public_key: Any) -> str:
    serialization, _ = crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


MAX_KEY_BYTES = 64 * 1024  # PEM and OpenSSH Ed25519 keys are a few hundred bytes


def _key_bytes(key: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(key, bytes):
        return key, "the key"
    if not isinstance(key, (str, os.PathLike)):
        raise ConfigError(f"a key must be a file path, PEM/OpenSSH bytes or a key object, got {type(key).__name__}")
    try:
        if not stat.S_ISREG(os.stat(key).st_mode):
            raise ConfigError(f"the key file {key} is not a regular file")
        with open(key, "rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {key}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_BYTES:
        raise ConfigError(f"the key file {key} is over {MAX_KEY_BYTES // 1024} KB: not a key")
    return data, str(key)


def load_private_key(key: str | Path | bytes) -> Any:
    """An Ed25519 private key from unencrypted PEM (PKCS#8) or OpenSSH text."""
    serialization, ed25519 = crypto()
    data, name = _key_bytes(key)
    load = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
            else serialization.load_pem_private_key)
    try:
        private = load(data, password=None)
    except TypeError as exc:
        raise ConfigError(f"{name} is encrypted; mlm-export signs with an unencrypted key. {KEY_HELP}") from exc
    except Exception as exc:  # ValueError, or an unsupported-algorithm error
        raise ConfigError(f"{name} is not a private key in PEM or OpenSSH format ({exc}). {KEY_HELP}") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{name} is a {type(private).__name__}; mlm-export signs with Ed25519 keys. {KEY_HELP}")
    return private


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key from a key object, or PEM/OpenSSH text (a private key gives its public half)."""
    serialization, ed25519 = crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    data, name = _key_bytes(key)
    if b"PRIVATE KEY" in data:
        return load_private_key(key).public_key()
    try:
        public = (serialization.load_ssh_public_key(data) if data.lstrip().startswith(b"ssh-")
                  else serialization.load_pem_public_key(data))
    except Exception as exc:
        raise ConfigError(f"{name} is not a public key in PEM or OpenSSH format ({exc}). {KEY_HELP}") from exc
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{name} is a {type(public).__name__}; mlm-export verifies Ed25519 signatures")
    return public


def generate_key(path: Path) -> tuple[Path, Path]:
    """Write a new private key (mode 0600) to `path` and its public key to `path`.pub; never overwrites."""
    serialization, ed25519 = crypto()
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise ConfigError(f"{str(path)!r} is not a file name for a key; give one, e.g. keys/signing-key")
    public_path = path.with_name(path.name + ".pub")
    for target in (path, public_path):  # both, before either is written
        if os.path.lexists(target):
            raise ConfigError(f"{target} already exists; mlm-export never overwrites a key. Choose another path")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    published: list[Path] = []
    try:  # each file appears whole under its name (never a torn key), and never over another file
        for target, data, mode in ((path, pem, 0o600), (public_path, public_pem, 0o644)):
            output = OutputFile(target, mode=mode, option="key path", force_option=None, keep_on_clash=False)
            try:
                with output.open(binary=True) as fh:
                    fh.write(data)
            except OSError as exc:
                output.discard()
                raise output.storage_error(exc) from exc
            published.append(output.publish())
    except BaseException:
        for target in published:  # no half of a key pair is left behind
            target.unlink(missing_ok=True)
        raise
    return path, public_path


def signature_fingerprint(directory: Path | str) -> str | None:
    """The fingerprint a signature file claims (unverified), or None when the artifact is unsigned."""
    try:
        path = path_inside(Path(directory).resolve(), SIGNATURE, "the signature")
        if not path.is_file() or path.stat().st_size > MAX_KEY_BYTES:
            return None
        claimed = json.loads(path.read_bytes().decode("utf-8"))["fingerprint"]
    except (ArtifactError, OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return claimed if isinstance(claimed, str) and re.fullmatch(r"[0-9a-f]{16}", claimed) else "unreadable"


def verify_signature(root: Path, manifest_bytes: bytes, public_key: Any) -> SignatureInfo:
    """Raise SignatureError unless `manifest_bytes` carry a valid signature by `public_key`."""
    public = load_public_key(public_key)  # first: it names the missing extra when cryptography is absent
    from cryptography.exceptions import InvalidSignature

    path = path_inside(root, SIGNATURE, "the signature")
    if not path.is_file():
        raise SignatureError(f"{root} is not signed (no {SIGNATURE}), but a signed artifact was required; "
                             "sign it with: mlm-export sign ARTIFACT --key KEY")
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise ValueError("too large")
        record = json.loads(path.read_bytes().decode("utf-8"))
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r}")
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise SignatureError(f"{root / SIGNATURE} is not an mlm-export signature ({str(exc)[:200]})") from exc
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(
            f"the signature of {root / MANIFEST} does not verify with the key given (fingerprint "
            f"{fingerprint(public)}): the manifest was edited after it was signed, or it was signed "
            "with another key. Do not serve this artifact; re-export and sign it") from exc
    return SignatureInfo(path, fingerprint(public))
