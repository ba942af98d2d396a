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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import sha256_file
from ..config import BUILTIN_MODELS
from ..errors import ExportError, MissingHeadError, SourceError

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

    @property
    def float32_weight_bytes(self) -> int:
        """Size the weights take as float32, read from safetensors headers without loading them.

        Only sizes the disk-space check: a half-precision checkpoint doubles in the export, and
        a pickled file, which cannot be measured without unpickling, counts as its size.
        """
        total = 0
        for path in self.weight_files:
            elements = _safetensors_elements(path) if path.suffix == ".safetensors" else None
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


def _safetensors_elements(path: Path) -> int | None:
    """Number of tensor elements a safetensors header declares; None if the header is unreadable."""
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 2 <= length <= 100 * 1024 * 1024:
                return None
            header = json.loads(fh.read(length))
        return sum(math.prod(int(d) for d in entry["shape"])
                   for key, entry in header.items() if key != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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

    config_data = read_config(source)
    model_type = config_data.get("model_type")
    if model_type != "bert":
        raise SourceError(f"{source.spec.location}: model_type {model_type!r} is not supported; "
                          "mlm-export handles BERT-style checkpoints (model_type 'bert')")
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing weights ourselves, precisely
    try:
        config = BertConfig.from_pretrained(source.model_dir)
        model, info = BertForMaskedLM.from_pretrained(source.model_dir, config=config, **kwargs)
    except Exception as exc:  # transformers, torch and safetensors each raise their own kinds
        raise SourceError(f"could not load {source.model_dir}: {_load_failure(exc)}") from exc
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


def model_facts(config: Any) -> dict[str, int]:
    """The shape facts the manifest records and the runtime trusts, from a BertConfig."""
    return {"num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "num_heads": config.num_attention_heads, "vocab_size": config.vocab_size,
            "type_vocab_size": config.type_vocab_size, "max_length": config.max_position_embeddings}


def read_config(source: ResolvedSource) -> dict:
    """config.json as a dict, or a SourceError that says what is wrong with it."""
    path = source.model_dir / "config.json"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path} is not a readable JSON file ({exc}); fix or re-save the model's "
                          "config.json") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _load_failure(exc: BaseException) -> str:
    """The cause a user can act on, found in the chain of errors transformers wraps."""
    chain, current = [], exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        text = str(error)
        if type(error).__name__ == "UnpicklingError" or "Weights only load failed" in text:
            return ("its pickled weights hold objects other than tensors, and loading them would run "
                    "code; mlm-export refused (torch.load weights_only=True). If you trust the file, "
                    "convert it to safetensors where it came from; otherwise do not use it. "
                    f"Detail: {text.split('. ')[0]}")
        if type(error).__name__ == "SafetensorError":
            return (f"a safetensors file is corrupt or truncated ({text}); download or copy it again")
    first = str(exc).splitlines()[0] if str(exc) else "no detail"
    return f"{type(exc).__name__}: {first}"


def load_tokenizer(source: ResolvedSource) -> Any:
    """A `tokenizers.Tokenizer` with padding and truncation off: the predictor pads itself."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer_json = source.model_dir / "tokenizer.json"
    if tokenizer_json.is_file() and not source.char_level:
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise SourceError(f"{tokenizer_json} is not a tokenizer file the `tokenizers` library can "
                              f"read ({exc}); re-save it, or remove it to build one from vocab.txt") from exc
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
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path} as UTF-8 text ({exc})") from exc
    return {token: index for index, token in enumerate(tokens)}


def _lowercase_setting(source: ResolvedSource) -> bool:
    if source.char_level:
        return False  # protein letters are case-sensitive; lowercasing maps every residue to [UNK]
    cfg = source.model_dir / "tokenizer_config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"{cfg} is not a readable JSON file ({exc})") from exc
        return bool(data.get("do_lower_case", True)) if isinstance(data, dict) else True
    return True
