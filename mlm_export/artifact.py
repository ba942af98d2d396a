"""Artifact files: sha256 hashing and the checked, confined path to each file a manifest lists.

Torch-free: the predictor checks hashes with this module before it loads a graph. A file is only
ever hashed after `manifest.path_inside` showed that it lies inside the artifact directory, so no
digest of an outside file is computed or printed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import IntegrityError
from .manifest import MANIFEST, SIGNATURE, path_inside


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: Path) -> dict[str, dict]:
    """sha256 and size of every file but the manifest, which cannot hash itself."""
    return {
        path.name: {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name not in (MANIFEST, SIGNATURE)
    }


def checked_file(directory: Path, manifest: dict, name: str) -> Path:
    """Path to `name` after its sha256 matched the manifest; refuses tampered, missing or outside files."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise IntegrityError(f"{name} is not listed in {Path(directory) / MANIFEST}")
    path = path_inside(Path(directory).resolve(), name, "the file")
    if not path.is_file():
        raise IntegrityError(f"{Path(directory) / name} is missing (listed in the manifest)")
    if sha256_file(path) != entry["sha256"]:
        raise IntegrityError(f"{Path(directory) / name} does not match its sha256 in the manifest "
                             f"(expected {entry['sha256'][:12]}…): the file was modified or "
                             "corrupted; re-export the artifact")
    return path


def check_all_files(directory: Path, manifest: dict) -> None:
    for name in manifest["files"]:
        checked_file(directory, manifest, name)
