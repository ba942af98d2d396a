"""The manifest: reading it validates its shape and confines every file it names to the artifact.

Torch-free. The reader is the one gate between a manifest on disk and the code that trusts it: a
missing or ill-typed key, an unknown form or precision, a format from another version, or a file
name that could reach outside the directory (absolute, `..`, a symlink out) is an `ArtifactError`
that names the key, never a `KeyError` later or a read of some other file.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # written by `mlm-export sign`; not listed in the manifest it signs
FORMAT_VERSION = 1
SCHEMA = "manifest-v1.schema.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # real manifests are a few KB; refuse to parse a giant file


@cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(resources.files("mlm_export.schemas").joinpath(SCHEMA).read_text(encoding="utf-8"))
    base = jsonschema.Draft202012Validator
    # JSON Schema counts 1e20 and 3.0 as integers; numpy and range() do not, so neither do we
    strict = base.TYPE_CHECKER.redefine("integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=strict)(schema)


def check_plain_name(name: object, where: str) -> str:
    """A file name the manifest may use: one path component, so it can only name a file inside."""
    if not isinstance(name, str) or not name or name in (".", "..") or len(name) > 255 \
            or any(c in name for c in "/\\:") or any(ord(c) < 32 for c in name):
        raise ArtifactError(f"{where} is {name!r}: an artifact may only name plain files inside its "
                            "own directory (no path separators, '..', or absolute paths)")
    return name


def path_inside(root: Path, name: str, where: str) -> Path:
    """`root / name` after resolving symlinks, refused if that leaves `root` (itself resolved)."""
    check_plain_name(name, where)
    real = Path(os.path.realpath(root / name))
    if not real.is_relative_to(root):
        raise ArtifactError(f"{where} {name!r} is a link to {real}, outside the artifact directory "
                            f"{root}; refusing to read it")
    return real


def read_manifest(directory: Path | str, public_key: object = None) -> dict:
    """The validated manifest of an artifact directory.

    With `public_key` (a key file's path, PEM/OpenSSH bytes, or a key object) the manifest's
    Ed25519 signature is checked on the very bytes that are then parsed.
    """
    return read_manifest_bytes(directory, public_key)[0]


def read_manifest_bytes(directory: Path | str, public_key: object = None) -> tuple[dict, bytes]:
    """The validated manifest and the exact bytes it was parsed from (what a signature covers)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; export one with: mlm-export MODEL --out {directory}")
    root = directory.resolve()
    if not (root / MANIFEST).is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not an mlm-export artifact")
    path = path_inside(root, MANIFEST, "the manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{directory / MANIFEST} is {path.stat().st_size / 1e6:.0f} MB; an mlm-export "
                            "manifest is a few KB. It is not one of ours: re-export the artifact")
    data = path.read_bytes()
    if public_key is not None:
        from .signing import verify_signature

        verify_signature(root, data, public_key)
    manifest = parse_manifest(data, directory / MANIFEST)
    _check_consistency(manifest, directory / MANIFEST)
    for name in manifest["files"]:
        path_inside(root, name, "the file")  # a link out is refused now, not only when its file is used
    return manifest, data


def parse_manifest(data: bytes, origin: Path | str) -> dict:
    """Decode and validate manifest bytes; `origin` only names them in errors."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{origin} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            "re-export the artifact") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit number, deep nesting
        raise ArtifactError(f"{origin} is not valid JSON ({str(exc)[:200]}); re-export the artifact") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{origin} holds a JSON {type(manifest).__name__}, not an object; "
                            "re-export the artifact")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{origin} has format_version {version!r}; this mlm-export reads "
                            f"{FORMAT_VERSION}. Re-export with this version.")
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(manifest))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{origin} is malformed at {key}: {error.message}; re-export the artifact")
    return manifest


def _check_consistency(manifest: dict, origin: Path) -> None:
    """What a schema cannot say: names plain and listed, token ids inside the vocabulary."""
    vocab = manifest["model"]["vocab_size"]
    tokenizer = manifest["tokenizer"]
    for key in ("mask_token_id", "pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id"):
        if tokenizer[key] >= vocab:
            raise ArtifactError(f"{origin}: tokenizer.{key} is {tokenizer[key]}, outside the vocabulary "
                                f"(model.vocab_size {vocab}); re-export the artifact")
    if any(i >= vocab for i in tokenizer["special_token_ids"]):
        raise ArtifactError(f"{origin}: tokenizer.special_token_ids has an id outside the vocabulary "
                            f"(model.vocab_size {vocab}); re-export the artifact")
    files = manifest["files"]
    for name in files:
        check_plain_name(name, f"{origin}: files")
    named = [(f"graphs.{graph}.file", entry["file"]) for graph, entry in manifest["graphs"].items()]
    named.append(("tokenizer.file", manifest["tokenizer"]["file"]))
    for key, name in named:
        check_plain_name(name, f"{origin}: {key}")
        if name not in files:
            raise ArtifactError(f"{origin}: {key} names {name!r}, which has no sha256 under 'files'; "
                                "re-export the artifact")


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write through a temporary name, so a reader never sees half a manifest."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
