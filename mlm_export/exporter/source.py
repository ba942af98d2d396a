"""Source stage: pin MODEL (a built-in name, a local directory or a hub id) to files on disk, and
tell which family it is before anything slow happens.

Torch is imported only for an old pickled checkpoint whose family can only be read from its weight
names; everything else here reads JSON and safetensors headers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact.files import sha256_file
from ..config import BUILTIN_MODELS
from ..errors import ExportError, SourceError
from ..families import FamilySpec, family_of

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
                "added_tokens.json"]
ANTIBERTY_VERSION = "0.1.3"


@dataclass(frozen=True)
class SourceSpec:
    """Where a model came from, as recorded in the manifest so `verify` can load it again."""

    kind: str  # "builtin" | "local" | "hub"
    location: str
    revision: str | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "location": self.location, "revision": self.revision}

    @classmethod
    def from_dict(cls, data: dict) -> SourceSpec:
        return cls(kind=data["kind"], location=data["location"], revision=data.get("revision"))

    @property
    def default_name(self) -> str:
        if self.kind == "builtin":
            return self.location
        return Path(self.location.rstrip("/")).name or "model"


@dataclass(frozen=True)
class ResolvedSource:
    """A source pinned to files on local disk, with its config.json read and its family known."""

    spec: SourceSpec
    model_dir: Path
    config: dict = field(hash=False, compare=False)
    family: FamilySpec
    vocab_file: Path | None  # a WordPiece or character vocabulary, where the checkpoint has one

    @property
    def weight_files(self) -> list[Path]:
        files = sorted({p for pat in WEIGHT_PATTERNS for p in self.model_dir.glob(pat)})
        safetensors = [p for p in files if p.suffix == ".safetensors"]
        return safetensors or files

    @property
    def float32_weight_bytes(self) -> int:
        """Size the weights take as float32, read from safetensors headers without loading them.

        Only sizes the disk-space check: a half-precision checkpoint doubles in the export, and
        a pickled file, which cannot be measured without unpickling, counts as its size.
        """
        total = 0
        for path in self.weight_files:
            header = _safetensors_header(path) if path.suffix == ".safetensors" else None
            elements = _elements(header) if header is not None else None
            total += 4 * elements if elements is not None else path.stat().st_size
        return total

    @functools.cached_property
    def weights_sha256(self) -> str:
        """Hashed once per source: export records it and its verify step checks it again."""
        files = self.weight_files
        if not files:
            raise SourceError(f"{self.model_dir} holds no weights (*.safetensors or pytorch_model*.bin)")
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            digest.update(bytes.fromhex(sha256_file(path)))
        return digest.hexdigest()


def _safetensors_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 2 <= length <= 100 * 1024 * 1024:
                return None
            header = json.loads(fh.read(length))
        return header if isinstance(header, dict) else None
    except (OSError, ValueError):
        return None


def _elements(header: dict) -> int | None:
    """Number of tensor elements a safetensors header declares; None if it is malformed."""
    try:
        return sum(math.prod(int(d) for d in entry["shape"]) for key, entry in header.items()
                   if key != "__metadata__")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _weight_names(model_dir: Path) -> Iterable[str]:
    """Tensor names of a checkpoint, for a config.json that does not say which family it is."""
    files = sorted({p for pat in WEIGHT_PATTERNS for p in model_dir.glob(pat)})
    names: list[str] = []
    for path in files:
        header = _safetensors_header(path) if path.suffix == ".safetensors" else None
        if header is not None:
            names += [k for k in header if k != "__metadata__"]
            continue
        try:
            import torch

            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files from before torch 1.6's zip format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            names += list(state)
        except Exception as exc:  # a blocked pickle, a truncated file
            raise SourceError(f"cannot read the weight names of {path} to tell the model family "
                              f"({type(exc).__name__}); add \"model_type\" to config.json") from exc
    return names


def require_export_extra() -> None:
    """A serving install lacks torch; say which extra to add instead of failing mid-way."""
    missing = [m for m in ("torch", "transformers", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"export and verify need {', '.join(missing)}: "
                          "pip install 'mlm-export[export,cpu]' (or [export,gpu])")


def parse_source(model: str, revision: str | None = None) -> SourceSpec:
    """What MODEL names, without touching the network: the destination checks need this first."""
    if model in BUILTIN_MODELS:
        return SourceSpec("builtin", model)
    path = Path(model).expanduser()
    if path.is_dir():
        return SourceSpec("local", str(path.resolve()))
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or not model.strip():
        raise SourceError(f"{model!r} is not a directory: pass a Hugging Face model directory "
                          f"(config.json plus weights), a hub id, or one of {', '.join(BUILTIN_MODELS)}")
    return SourceSpec("hub", model, revision)


def resolve(model: str, revision: str | None = None) -> ResolvedSource:
    """Pin MODEL to local files; hub downloads happen here and nowhere else."""
    return resolve_spec(parse_source(model, revision))


def resolve_spec(spec: SourceSpec) -> ResolvedSource:
    if spec.kind == "builtin":
        return _resolve_antiberty()
    if spec.kind == "local":
        path = Path(spec.location)
        if not path.is_dir():
            raise SourceError(f"the source directory {path} recorded in the manifest is gone; "
                              "pass --source DIR to verify against a copy of it")
        return _resolve_local(path, spec)
    return _resolve_hub(spec.location, spec.revision)


def read_config(model_dir: Path) -> dict:
    """config.json as a dict, or a SourceError that says what is wrong with it."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise SourceError(f"{model_dir} has no config.json: it is not a Hugging Face model directory")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SourceError(f"{path} is not a readable JSON file ({str(exc)[:200]}); fix or re-save the "
                          "model's config.json") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _resolve_local(path: Path, spec: SourceSpec, vocab: Path | None = None) -> ResolvedSource:
    config = read_config(path)
    family = family_of(config, lambda: _weight_names(path), where=spec.location)
    vocab = vocab or (path / "vocab.txt")
    return ResolvedSource(spec, path, config, family, vocab if vocab.is_file() else None)


def _resolve_hub(model_id: str, revision: str | None) -> ResolvedSource:
    """config.json first: an unsupported family is refused before gigabytes of weights download."""
    try:
        from huggingface_hub import snapshot_download

        config = read_config(Path(snapshot_download(model_id, revision=revision, allow_patterns=["config.json"])))
        if config.get("model_type"):
            family_of(config, where=model_id)
        local = Path(snapshot_download(model_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except SourceError:
        raise
    except Exception as exc:  # offline, unknown id, gated repo: all end the same way for the user
        raise SourceError(
            f"could not fetch {model_id!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Without hub access, pass a "
            f"local model directory instead, or the built-in name 'antiberty'.") from exc
    return _resolve_local(local, SourceSpec("hub", model_id, revision=local.name))


def _resolve_antiberty() -> ResolvedSource:
    spec = importlib.util.find_spec("antiberty")
    if spec is None or spec.origin is None:
        raise SourceError(f"the built-in model 'antiberty' needs its PyPI package: "
                          f"pip install antiberty=={ANTIBERTY_VERSION}")
    version = importlib.metadata.version("antiberty")
    if version != ANTIBERTY_VERSION:
        raise SourceError(f"antiberty {version} is installed, but only {ANTIBERTY_VERSION} ships its "
                          f"weights (later versions download them at run time): "
                          f"pip install antiberty=={ANTIBERTY_VERSION}")
    root = Path(spec.origin).parent / "trained_models"
    model_dir = root / "AntiBERTy_md_smooth"
    if not (model_dir / "config.json").is_file():
        raise SourceError(f"the antiberty package at {root.parent} lacks {model_dir.name}/config.json")
    return _resolve_local(model_dir, SourceSpec("builtin", "antiberty"), vocab=root / "vocab.txt")

