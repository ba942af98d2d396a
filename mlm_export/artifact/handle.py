"""`Artifact`: one opened artifact directory, the only way the runtime, verify, Triton, slim, sign, info
and the Ray actors read an artifact.

Opening reads the manifest once (its signature checked on those very bytes when a key is given),
validates it, and learns which graphs a slim copy holds. Every file is then handed out only through
a hash check against that manifest. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, InputError
from ..manifest import SLIM, GraphEntry, Manifest, parse_manifest_bytes, path_inside, raw_manifest_bytes
from .files import check_all_files, checked_bytes, checked_file, verified_path
from .signature import SignatureInfo, verify_signature

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAX_SLIM_BYTES = 64 * 1024


@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose manifest was read, validated (and, with a key, signature-checked) once.

    `manifest` is the whole manifest as written (and signed); `graphs` and `files` are what this
    directory holds: all of them, unless it is a slim copy (`mlm-export slim`), whose `left_out` graphs
    are absent on purpose.
    """

    path: Path
    root: Path
    manifest: Manifest
    manifest_bytes: bytes
    left_out: tuple[str, ...] = ()
    signature: SignatureInfo | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], public_key: Any = None) -> Artifact:
        """Open the artifact at `path`. With `public_key` (a key file's path, PEM/OpenSSH bytes or a key
        object) the manifest's Ed25519 signature is mandatory: an unsigned or edited artifact raises
        `SignatureError`."""
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise InputError(f"an artifact is a directory path, got {path!r}")
        directory = Path(path)
        data = raw_manifest_bytes(directory)
        root = directory.resolve()
        signature = None if public_key is None else verify_signature(root, data, public_key)
        manifest = parse_manifest_bytes(data, directory)
        return cls(directory, root, manifest, data, _slim_marker(directory, manifest), signature)

    # what this directory holds
    @property
    def present(self) -> Manifest:
        """The manifest narrowed to the graphs (and files) this directory holds."""
        if not self.left_out:
            return self.manifest
        gone = {f for name in self.left_out for f in (self.manifest.graphs[name].file,
                                                     self.manifest.graphs[name].data_file) if f}
        return replace(self.manifest,
                       graphs={n: g for n, g in self.manifest.graphs.items() if n not in self.left_out},
                       files={n: e for n, e in self.manifest.files.items() if n not in gone})

    @property
    def graphs(self) -> dict[str, GraphEntry]:
        """The graphs this directory holds, by name."""
        return {n: g for n, g in self.manifest.graphs.items() if n not in self.left_out}

    def graphs_of(self, form: str) -> dict[str, GraphEntry]:
        """The present graphs of one form ("fill-mask", "logits"), by name."""
        return {n: g for n, g in self.graphs.items() if g.form == form}

    def graph(self, name: str, form: str | None = None) -> GraphEntry:
        """The entry of a present graph; a left-out or unknown name is an `ArtifactError` that lists
        what the artifact has."""
        if not isinstance(name, str):
            raise InputError(f"a graph is named by a string such as 'fp32', got {name!r}")
        self.refuse_left_out(name)
        candidates = self.graphs if form is None else self.graphs_of(form)
        if name not in candidates:
            raise ArtifactError(f"variant {name!r} is not in {self.path}; it has {', '.join(sorted(candidates))}")
        return candidates[name]

    def refuse_left_out(self, name: object) -> None:
        """A graph asked for by name that slimming left out is an error that says so, not 'unknown'."""
        if isinstance(name, str) and name in self.left_out:
            raise ArtifactError(f"variant {name!r} was left out of the slim artifact {self.path} (slim.json); it "
                                f"has {', '.join(sorted(self.graphs))}. Load the full artifact for {name}")

    # hash-checked access
    def checked_bytes(self, name: str) -> bytes:
        """A listed file's contents, read once, after they matched the manifest's sha256 and size."""
        return checked_bytes(self.path, self.manifest, name)

    def checked_path(self, name: str) -> Path:
        """A listed file's path after its sha256 matched (a loader that re-reads it may race a writer:
        prefer `verified_path` or `checked_bytes`)."""
        return checked_file(self.path, self.manifest, name)

    def verified_path(self, name: str) -> contextlib.AbstractContextManager[str]:
        """A path that reads exactly the bytes that were hash-checked, for a loader that wants a path."""
        return verified_path(self.path, self.manifest, name)

    def check_files(self) -> None:
        """Every file this directory should hold present, inside it, and matching its sha256; and every
        file of a left-out graph that is there all the same matching too. slim.json is not signed: it may
        hide a graph from the runtime, never a tampered file from `verify` or `sign`."""
        check_all_files(self.path, self.present)
        for name in self.manifest.files.keys() - self.present.files.keys():
            if os.path.lexists(self.path / name):
                checked_file(self.path, self.manifest, name)

    def path_of(self, name: str) -> Path:
        """Where a file the manifest lists lies, confined to the directory; not hash-checked."""
        return path_inside(self.root, name, "the file")

    def tokenizer(self) -> Tokenizer:
        """The artifact's `tokenizers` tokenizer, from its hash-checked bytes, padding and truncation off."""
        from tokenizers import Tokenizer

        name = self.manifest.tokenizer.file
        data = self.checked_bytes(name)
        try:
            tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # not UTF-8, or the Rust side's bare Exception
            raise ArtifactError(f"{self.path / name} cannot be read by `tokenizers` ({exc}); "
                                "re-export the artifact") from exc
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def __repr__(self) -> str:
        slim = f", left_out={list(self.left_out)}" if self.left_out else ""
        return f"Artifact({str(self.path)!r}, graphs={list(self.graphs)}{slim})"


def _slim_marker(directory: Path, manifest: Manifest) -> tuple[str, ...]:
    """The graphs a slim copy left out, as its slim.json says; () for a full artifact. slim.json is not
    signed: it can only hide graphs, never add or change one."""
    if not os.path.lexists(directory / SLIM):
        return ()
    path = path_inside(directory.resolve(), SLIM, "the slim marker")
    try:
        if not path.is_file():  # a FIFO would block the read; a dangling link would pass for no marker
            raise ValueError("not a regular file")
        if path.stat().st_size > MAX_SLIM_BYTES:
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

