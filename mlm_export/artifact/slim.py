"""Slim serving artifacts: a copy of an artifact with only the graphs an app loads.

A full AntiBERTy artifact is 235 MB; an app that serves int8 needs its 29 MB graph and the tokenizer.
The slim copy keeps the manifest (and its signature) byte for byte, so every file it holds is still
checked against the same sha256 and the same public key still verifies it. `slim.json` names the
graphs left out, so that they read as absent on purpose, not as missing files: `OnnxMaskFiller`,
`score`, `triton` and `sign` work with the graphs it holds; `verify` checks those and says which it
could not; `info` lists the rest as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, IntegrityError
from ..manifest import MANIFEST, SIGNATURE, SLIM, path_inside
from .handle import Artifact
from .staging import atomic_directory, estimate_free_space


@dataclass(frozen=True)
class SlimResult:
    """The slim copy just written, and what it saved."""

    path: Path
    kept: tuple[str, ...]
    absent: tuple[str, ...]
    bytes: int
    bytes_before: int  # of the source's files (a slim copy's own, when slimming one further)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kept": list(self.kept), "absent": list(self.absent),
                "bytes": self.bytes, "bytes_before": self.bytes_before}


def slim_artifact(directory: Path | str, out: Path | str, keep: Sequence[str], force: bool = False) -> SlimResult:
    """Write to `out` a copy of the artifact in `directory` holding only the graphs in `keep`.

    Every copied byte is hashed on the way and must match the manifest: a tampered artifact is never
    slimmed. `out` appears whole or not at all; `force` replaces only an earlier mlm-export artifact.
    """
    directory, out = Path(directory), Path(out)
    artifact = Artifact.open(directory)
    manifest, manifest_bytes, present = artifact.manifest, artifact.manifest_bytes, artifact.present
    for item in [keep] if isinstance(keep, str) else keep:
        for name in str(item).split(","):  # 'left out of the slim copy', not 'no such graph'
            artifact.refuse_left_out(name.strip())
    keep = _checked_keep(keep, present.graphs, directory)
    root = artifact.root
    if out.resolve() == root or root in out.resolve().parents:
        raise ArtifactError(f"{out} is inside the artifact {directory}; write the slim copy somewhere else")
    dropped = {f for name, g in present.graphs.items() if name not in keep for f in (g.file, g.data_file) if f}
    files = [name for name in present.files if name not in dropped]
    need = sum(present.files[name].size for name in files)
    with atomic_directory(out, force, [directory]) as build:
        estimate_free_space(build, need)
        for name in files:
            _copy_checked(directory, name, present.files[name].sha256, build / name)
        (build / MANIFEST).write_bytes(manifest_bytes)  # the bytes validated above; a signature still covers them
        signature = path_inside(root, SIGNATURE, SIGNATURE)
        if signature.is_file():
            shutil.copyfile(signature, build / SIGNATURE)
        absent = tuple(name for name in manifest.graphs if name not in keep)
        (build / SLIM).write_text(json.dumps({"absent": list(absent)}, indent=2) + "\n", encoding="utf-8")
    return SlimResult(out, tuple(keep), absent, need, sum(e.size for e in present.files.values()))


def _checked_keep(keep: Sequence[str], graphs: Mapping[str, Any], directory: Path) -> list[str]:
    if isinstance(keep, str):
        keep = [keep]
    names = [part.strip() for item in keep for part in str(item).split(",") if part.strip()]
    if not names:
        raise ConfigError("name the graphs to keep, e.g. --keep int8 (this artifact has "
                         f"{', '.join(graphs)})")
    unknown = [name for name in names if name not in graphs]
    if unknown:
        raise ConfigError(f"{directory} has no graph {', '.join(map(repr, unknown))}; it has {', '.join(graphs)}")
    return [name for name in graphs if name in names]  # the manifest's order, each once


def _copy_checked(directory: Path, name: str, sha256: str, dst: Path) -> None:
    source = path_inside(directory.resolve(), name, "the file")
    if not source.is_file():
        raise IntegrityError(f"{directory / name} is missing (listed in the manifest); nothing was written")
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dst, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        raise IntegrityError(f"{directory / name} does not match its sha256 in the manifest: the file was "
                             "modified or corrupted; nothing was written. Re-export the artifact")
