"""Artifact files: sha256 hashing and the checked, confined path to each file a manifest lists.

Torch-free: the predictor checks hashes with this module before it loads a graph. A file is only
ever hashed after `manifest.path_inside` showed that it lies inside the artifact directory, so no
digest of an outside file is computed or printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from .errors import ArtifactError, IntegrityError
from .manifest import MANIFEST, SIGNATURE, SLIM, FileEntry, Manifest, path_inside


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


def absent_graphs(directory: Path, manifest: Manifest) -> tuple[str, ...]:
    """The graphs of `manifest` that a slim copy (`mlm-export slim`) left out, as its slim.json says;
    () for a full artifact. slim.json is not signed: it can only hide graphs, never add or change one."""
    if not os.path.lexists(Path(directory) / SLIM):
        return ()
    path = path_inside(Path(directory).resolve(), SLIM, "the slim marker")
    try:
        if not path.is_file():  # a FIFO would block the read; a dangling link would pass for no marker
            raise ValueError("not a regular file")
        if path.stat().st_size > 64 * 1024:
            raise ValueError("larger than 64 KB")
        data = json.loads(path.read_bytes().decode("utf-8"))
        absent = data.get("absent") if isinstance(data, dict) else None
        if not isinstance(absent, list) or not all(isinstance(name, str) for name in absent):
            raise ValueError('expected {"absent": [graph names]}')
    except (OSError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not a valid slim marker ({exc}); slim the full artifact again") from exc
    unknown = sorted(set(absent) - set(manifest.graphs))
    if unknown:
        raise ArtifactError(f"{path} names graphs the manifest does not have ({', '.join(unknown)}); slim the "
                            "full artifact again")
    if set(absent) >= set(manifest.graphs):
        raise ArtifactError(f"{path} says every graph was left out; slim the full artifact again")
    return tuple(name for name in manifest.graphs if name in absent)


def left_out(full: Manifest, present: Manifest) -> tuple[str, ...]:
    """The graphs of `full` that `present` (its present_graphs) does not hold: () for a full artifact."""
    return tuple(name for name in full.graphs if name not in present.graphs)


def refuse_left_out(directory: Path, full: Manifest, present: Manifest, variant: object) -> None:
    """A variant asked for by name that slimming left out is an error that says so, not 'unknown variant'."""
    if isinstance(variant, str) and variant in left_out(full, present):
        raise ArtifactError(f"variant {variant!r} was left out of the slim artifact {directory} (slim.json); it "
                            f"has {', '.join(sorted(present.graphs))}. Load the full artifact for {variant}")


def present_graphs(directory: Path, manifest: Manifest) -> Manifest:
    """`manifest` narrowed to the graphs (and files) this directory holds: all of them, unless it is a
    slim copy. What the predictor, Triton, Ray and sign work from; `info` and `verify` show the rest."""
    absent = absent_graphs(directory, manifest)
    if not absent:
        return manifest
    gone = {f for name in absent for f in (manifest.graphs[name].file, manifest.graphs[name].data_file) if f}
    return replace(manifest, graphs={n: g for n, g in manifest.graphs.items() if n not in absent},
                   files={n: e for n, e in manifest.files.items() if n not in gone})
