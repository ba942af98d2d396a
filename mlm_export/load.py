"""Load stage: resolve MODEL (built-in name, local directory or hub id) to a model and a tokenizer.

Everything here imports torch/transformers lazily so that `mlm_export` itself stays torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import sha256_file
from .config import BUILTIN_MODELS
from .errors import ExportError, MissingHeadError, SourceError

log = logging.getLogger("mlm_export")

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt"]
ANTIBERTY_VERSION = "0.1.3"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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
    """A source pinned to files on local disk."""

    spec: SourceSpec
    model_dir: Path
    vocab_file: Path | None
    char_level: bool  # protein vocabularies: one token per letter, sequences may be unspaced

    @property
    def weight_files(self) -> list[Path]:
        files = sorted({p for pat in WEIGHT_PATTERNS for p in self.model_dir.glob(pat)})
        safetensors = [p for p in files if p.suffix == ".safetensors"]
        return safetensors or files

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


def require_export_extra() -> None:
    """A serving install lacks torch; say which extra to add instead of failing mid-way."""
    missing = [m for m in ("torch", "transformers", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"export and verify need {', '.join(missing)}: "
                          "pip install 'mlm-export[export,cpu]' (or [export,gpu])")


def resolve(model: str, revision: str | None = None) -> ResolvedSource:
    """Pin MODEL to local files; hub downloads happen here and nowhere else."""
    if model in BUILTIN_MODELS:
        return _resolve_antiberty()
    path = Path(model).expanduser()
    if path.is_dir():
        return _resolve_local(path.resolve(), SourceSpec("local", str(path.resolve())))
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise SourceError(f"{model!r} is not a directory: pass a Hugging Face model directory "
                          f"(config.json plus weights), a hub id, or one of {', '.join(BUILTIN_MODELS)}")
    return _resolve_hub(model, revision)


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


def _resolve_local(path: Path, spec: SourceSpec) -> ResolvedSource:
    if not (path / "config.json").is_file():
        raise SourceError(f"{path} has no config.json: it is not a Hugging Face model directory")
    vocab = path / "vocab.txt"
    return ResolvedSource(spec, path, vocab if vocab.is_file() else None, char_level=False)


def _resolve_hub(model_id: str, revision: str | None) -> ResolvedSource:
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(model_id, revision=revision, allow_patterns=HUB_PATTERNS))
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
    return ResolvedSource(SourceSpec("builtin", "antiberty"), model_dir, root / "vocab.txt",
                          char_level=True)


def load_model(source: ResolvedSource, attn_implementation: str | None = None) -> Any:
    """A fresh BertForMaskedLM in eval mode; refuses checkpoints whose MLM head would be random."""
    import torch  # noqa: F401  (transformers needs it; import error message is clearer here)
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    config_data = json.loads((source.model_dir / "config.json").read_text())
    model_type = config_data.get("model_type")
    if model_type != "bert":
        raise SourceError(f"{source.spec.location}: model_type {model_type!r} is not supported; "
                          "mlm-export handles BERT-style checkpoints (model_type 'bert')")
    config = BertConfig.from_pretrained(source.model_dir)
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing weights ourselves, precisely
    try:
        model, info = BertForMaskedLM.from_pretrained(source.model_dir, config=config, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"could not load {source.model_dir}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    head = [k for k in missing if k.startswith("cls.")]
    if head:
        raise MissingHeadError(
            f"{source.spec.location} has no trained MLM head: {', '.join(head)} would be newly "
            "initialised. A random head predicts noise; export a checkpoint saved with its MLM head "
            "(e.g. BertForMaskedLM), not an encoder-only one.")
    if missing:
        raise SourceError(f"{source.spec.location} lacks encoder weights: {', '.join(missing[:8])}"
                          + (" ..." if len(missing) > 8 else ""))
    return model.eval()


def load_tokenizer(source: ResolvedSource) -> Any:
    """A `tokenizers.Tokenizer` with padding and truncation off: the predictor pads itself."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer_json = source.model_dir / "tokenizer.json"
    if tokenizer_json.is_file() and not source.char_level:
        tok = Tokenizer.from_file(str(tokenizer_json))
    elif source.vocab_file is not None:
        lower = _lowercase_setting(source)
        vocab = _read_vocab(source.vocab_file)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise SourceError(f"{source.vocab_file} lacks the BERT special tokens {missing}")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lower)
        if source.char_level:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")])
            tok.decoder = decoders.Fuse()
        else:
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tok.add_special_tokens(list(SPECIAL_TOKENS))
    else:
        raise SourceError(f"{source.model_dir} has neither tokenizer.json nor vocab.txt")
    tok.no_truncation()
    tok.no_padding()
    for token in SPECIAL_TOKENS:
        if tok.token_to_id(token) is None:
            raise SourceError(f"the tokenizer of {source.spec.location} has no {token} token")
    return tok


def _read_vocab(path: Path) -> dict[str, int]:
    tokens = path.read_text(encoding="utf-8").splitlines()
    return {token: index for index, token in enumerate(tokens)}


def _lowercase_setting(source: ResolvedSource) -> bool:
    if source.char_level:
        return False  # protein letters are case-sensitive; lowercasing maps every residue to [UNK]
    cfg = source.model_dir / "tokenizer_config.json"
    if cfg.is_file():
        return bool(json.loads(cfg.read_text()).get("do_lower_case", True))
    return True
