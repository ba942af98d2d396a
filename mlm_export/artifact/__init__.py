"""The artifact: a directory with a typed manifest, hash-checked files and an optional signature.

    handle.py     Artifact.open: the manifest read once, the graphs present, hash-checked files
    files.py      sha256 and the confined, checked path to each file a manifest lists
    signature.py  Ed25519 keys and signature checks (a leaf: bytes and keys only)
    sign.py       sign_artifact          slim.py     slim copies          staging.py  atomic writes

The manifest's data types are in `mlm_export.manifest` (pure data).
"""

from __future__ import annotations

from .files import file_entries, sha256_file, verified_path
from .handle import Artifact

__all__ = ["Artifact", "file_entries", "sha256_file", "verified_path"]
