"""Artifact stage: the manifest, file hashes, and atomic directory writes.

Torch-free: the predictor reads manifests and checks hashes with this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterator

from .errors import ArtifactError, IntegrityError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
        if path.is_file() and path.name != MANIFEST
    }


def read_manifest(directory: Path | str) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; export one with: mlm-export MODEL --out {directory}")
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not an mlm-export artifact")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the artifact") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version!r}; this mlm-export reads "
                            f"{FORMAT_VERSION}. Re-export with this version.")
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, directory / MANIFEST)


def checked_file(directory: Path, manifest: dict, name: str) -> Path:
    """Path to `name` after its sha256 matched the manifest; refuses tampered or missing files."""
    entry = manifest.get("files", {}).get(name)
    path = directory / name
    if entry is None:
        raise IntegrityError(f"{name} is not listed in {directory / MANIFEST}")
    if not path.is_file():
        raise IntegrityError(f"{path} is missing (listed in the manifest)")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise IntegrityError(f"{path} does not match its sha256 in the manifest (expected "
                             f"{entry['sha256'][:12]}…, found {actual[:12]}…): the file was "
                             "modified or corrupted; re-export the artifact")
    return path


def check_all_files(directory: Path, manifest: dict) -> None:
    for name in manifest.get("files", {}):
        checked_file(directory, manifest, name)


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it into place only if the block succeeds."""
    out = Path(out)
    ensure_writable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artifact should not be
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_writable(out: Path, force: bool) -> None:
    """Fail before any slow work when the destination would be clobbered."""
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
