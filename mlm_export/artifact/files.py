"""Artifact files: sha256 hashing and the checked, confined path to each file a manifest lists.

Torch-free; used through `Artifact`. A file is only ever hashed after `manifest.path_inside` showed
that it lies inside the artifact directory, so no digest of an outside file is computed or printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import IntegrityError
from ..manifest import MANIFEST, SIGNATURE, SLIM, FileEntry, Manifest, path_inside


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(directory: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file but the manifest, which cannot hash itself."""
    return {
        path.name: FileEntry(sha256_file(path), path.stat().st_size)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name not in (MANIFEST, SIGNATURE, SLIM)
    }


def checked_bytes(directory: Path, manifest: Manifest, name: str) -> bytes:
    """The contents of `name`, read once, after they matched the manifest's sha256 and size."""
    entry, path = _listed(directory, manifest, name)
    data = path.read_bytes()
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise _mismatch(directory, name, entry)
    return data


@contextlib.contextmanager
def verified_path(directory: Path, manifest: Manifest, name: str) -> Iterator[str]:
    """A path that reads exactly the bytes that were hash-checked, for a loader that wants a path.

    The file is opened once; its hash is computed through that descriptor, and on Linux the loader
    reads the same descriptor through /proc/self/fd, so a file renamed into place after the check is
    never what gets loaded. A write into the file itself changes its ctime, which is compared after
    the block. (A graph with external data is loaded by its path instead: ONNX Runtime finds the data
    beside it.)
    """
    entry, path = _listed(directory, manifest, name)
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        if digest.hexdigest() != entry.sha256:
            raise _mismatch(directory, name, entry)
        via_fd = f"/proc/self/fd/{fh.fileno()}"
        yield via_fd if os.path.exists(via_fd) else str(path)
        after = os.fstat(fh.fileno())
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (before.st_size, before.st_mtime_ns,
                                                                  before.st_ctime_ns):
        raise IntegrityError(f"{Path(directory) / name} changed while it was being loaded; load it again")


def checked_file(directory: Path, manifest: Manifest, name: str) -> Path:
    """Path to `name` after its sha256 matched the manifest; refuses tampered, missing or outside files."""
    entry, path = _listed(directory, manifest, name)
    if sha256_file(path) != entry.sha256:
        raise _mismatch(directory, name, entry)
    return path


def _listed(directory: Path, manifest: Manifest, name: str) -> tuple[FileEntry, Path]:
    entry = manifest.files.get(name)
    if entry is None:
        raise IntegrityError(f"{name} is not listed in {Path(directory) / MANIFEST}")
    path = path_inside(Path(directory).resolve(), name, "the file")
    if not path.is_file():
        raise IntegrityError(f"{Path(directory) / name} is missing (listed in the manifest)")
    return entry, path


def _mismatch(directory: Path, name: str, entry: FileEntry) -> IntegrityError:
    return IntegrityError(f"{Path(directory) / name} does not match its sha256 in the manifest (expected "
                          f"{entry.sha256[:12]}…): the file was modified or corrupted; re-export the artifact")


def check_all_files(directory: Path, manifest: Manifest) -> None:
    """Every listed file present, inside the directory, and matching its sha256."""
    for name in manifest.files:
        checked_file(directory, manifest, name)
