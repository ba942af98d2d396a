"""`mlm-export sign`: an Ed25519 signature over an artifact's manifest, written only for an artifact
whose every file (a slim copy: every file it holds) still matches the manifest."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from ..errors import ArtifactError, StorageError
from ..manifest import MANIFEST, SIGNATURE
from .handle import Artifact
from .signature import ALGORITHM, SignatureInfo, crypto, fingerprint, load_private_key


def sign_artifact(directory: Path | str, key: str | Path | bytes) -> SignatureInfo:
    """Sign the manifest after checking every file against it: a tampered artifact is never signed."""
    directory = Path(directory)
    private = load_private_key(key)
    artifact = Artifact.open(directory)
    artifact.check_files()  # a slim copy: the files it holds
    data = artifact.manifest_bytes  # sign exactly the bytes that were validated
    root = artifact.root
    public = private.public_key()
    serialization, _ = crypto()
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"algorithm": ALGORITHM, "signed_file": MANIFEST,
              "public_key": base64.b64encode(raw_public).decode(), "fingerprint": fingerprint(public),
              "signature": base64.b64encode(private.sign(data)).decode()}
    target = root / SIGNATURE
    if target.is_symlink():
        raise ArtifactError(f"{directory / SIGNATURE} is a symlink; remove it before signing")
    tmp = root / (SIGNATURE + ".tmp")
    try:
        tmp.unlink(missing_ok=True)  # never write through a link someone left there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {directory / SIGNATURE}: {exc.strerror}") from exc
    return SignatureInfo(directory / SIGNATURE, record["fingerprint"])


