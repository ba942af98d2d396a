"""The artifact contract: a typed manifest, and a reader that validates it and confines every file
it names to the artifact directory.

Pure data, torch-free, no crypto (signatures: `artifact.signature`). The reader is the one gate
between a manifest on disk and the code that trusts it: a missing or ill-typed key, an unknown form
or precision, a format from another version, or a file name that could reach outside the directory
(absolute, `..`, a symlink out) is an `ArtifactError` that names the key, never a `KeyError` later
or a read of some other file.

Each graph declares its inputs and outputs (names, dtypes, axes): the predictor feeds exactly those
and reads outputs by name, so it never needs to know a model family. The family is a name (format 4):
a family this version has no code for is read and served; only export and verify look it up.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # written by `mlm-export sign`; not listed in the manifest it signs
SLIM = "slim.json"  # written by `mlm-export slim`: the graphs a slim copy left out on purpose
# 3 added the bf16 variant (`head_input`) and the probability bound of the gates; 4 stores the family as a
# name (FAMILY_NAME) where 2 and 3 held it to the families of their day, so adding one edits no schema; 5
# adds the sparse and embed tasks; 6 the fill-mask graph's `score_positions` input (the head at unmasked
# positions: wild-type marginals), which a reader of format 5 could not feed. An artifact is written in the
# oldest format that holds it (`format_for`).
FORMAT_VERSION = 6
# the formats this version reads, each checked by its own schema: an older artifact needs no re-export
SCHEMAS = {2: "manifest-v2.schema.json", 3: "manifest-v3.schema.json", 4: "manifest-v4.schema.json",
           5: "manifest-v5.schema.json", 6: "manifest-v6.schema.json"}
FILL_MASK = "fill-mask"
TASK_FORMS = ("sparse", "embed")  # the tasks beside fill-mask; their graphs are named TASK.PRECISION
TASKS = (FILL_MASK,) + TASK_FORMS
# what a family's name may be (manifest-v4's `family` pattern, without the anchors JSON Schema needs)
FAMILY_NAME = r"[a-z0-9][a-z0-9_.-]{0,63}"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # real manifests are a few KB; refuse to parse a giant file


@dataclass(frozen=True)
class Tolerance:
    """A variant's parity gate, written into the manifest so `verify` enforces the same numbers."""

    max_abs_logit: float | None = None
    # float32 rounding grows with the logits' scale (and with depth): the allowed difference is
    # max(max_abs_logit, max_rel_logit x the largest |logit| PyTorch gave at the probes)
    max_rel_logit: float | None = None
    # reduced precisions: the largest |Δ probability| at the graph's top-k, a bound far above what rounding
    # moves (AntiBERTy int8: 0.05) that a mis-normalized softmax (0.98) does not pass
    max_abs_prob: float | None = None
    min_top1_agreement: float = 1.0
    min_topk_overlap: float = 1.0
    top_k: int = 5
    scope: str = "all"  # "all" probes, the "realistic" texts when the artifact has some, or the synthetic "shapes"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.max_abs_prob is None:  # absent in format 2, whose schema has no such key
            del data["max_abs_prob"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        return cls(**data)


@dataclass(frozen=True)
class VectorTolerance:
    """The gate of a sparse or embed graph: vectors per text against PyTorch's. Each bound that is not
    None holds on every text of the gated probes, except the top-k overlap, which holds on average."""

    max_abs: float | None = None            # largest |difference| of any value
    min_cosine: float | None = None         # per text: the sparse vector, or the mean-pooled embedding
    min_token_cosine: float | None = None   # embed: per attended token
    min_topk_overlap: float | None = None   # sparse: the top-k terms, swaps within `tie` ignored
    top_k: int = 20
    tie: float = 1e-4
    scope: str = "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VectorTolerance:
        return cls(**data)


@dataclass(frozen=True)
class TaskOptions:
    """What a sparse or embed graph computes, fixed at export (`task` in the manifest)."""

    pooling: str | None = None       # sparse: "max" (SPLADE v2, ++) or "sum" (SPLADE v1)
    chunk_tokens: int | None = None  # sparse: rows of the MLM head per iteration of its loop
    layer: int | None = None         # embed: the hidden states given, 0 the embeddings, num_layers the last

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskOptions:
        return cls(data.get("pooling"), data.get("chunk_tokens"), data.get("layer"))


def graph_name(form: str, precision: str) -> str:
    """A graph's name in the manifest: fill-mask variants by their precision (as since format 2), the
    other tasks' as TASK.PRECISION."""
    return precision if form == FILL_MASK else f"{form}.{precision}"


def format_for(graphs: Mapping[str, GraphEntry]) -> int:
    """The oldest manifest format that holds `graphs`: 6 with a graph that takes `score_positions`, 5 with
    a task graph, else 4."""
    if any("score_positions" in g.input_names for g in graphs.values()):
        return 6
    return 5 if any(g.form in TASK_FORMS for g in graphs.values()) else 4


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: axes are names ("batch", "sequence", ...) or fixed sizes."""

    name: str
    dtype: str  # "int64" | "float32" | "bool"
    shape: tuple[str | int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class SourceInfo:
    kind: str  # "builtin" | "local" | "hub"
    location: str
    revision: str | None
    weights_sha256: str
    weights_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    type_vocab_size: int  # 0 for families without token types
    max_length: int       # tokens a sequence may hold, special tokens included
    float32_parameter_bytes: int
    parameters: int = 0


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    scheme: str
    special_tokens: dict[str, str]  # name by role: mask, cls, sep, pad, unk
    special_ids: dict[str, int]     # id by role
    all_special_ids: tuple[int, ...]

    @property
    def every_special_id(self) -> tuple[int, ...]:
        """Every special id, by role or listed: what scoring excludes and probes never mask."""
        return tuple(sorted(set(self.all_special_ids) | set(self.special_ids.values())))

    @property
    def mask_token(self) -> str:
        return self.special_tokens["mask"]

    @property
    def mask_token_id(self) -> int:
        return self.special_ids["mask"]

    @property
    def pad_token_id(self) -> int:
        return self.special_ids["pad"]

    @property
    def char_level(self) -> bool:
        return self.scheme == "characters"


class _Record(Mapping[str, Any]):
    """A typed report record that also reads as the JSON object it is stored as (`record["passed"]`), so
    code written against the manifest's JSON keeps working. Subclasses are frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


@dataclass(frozen=True, eq=False)
class FusionRecord(_Record):
    """What ONNX Runtime's fusions did to a graph: the fused-op counts, and attention against the layers."""

    counts: dict[str, int]
    attention: int
    expected_attention: int
    mode: str  # "required" (one Attention per layer, or the export fails) | "none" (the family fuses none)
    complete: bool | None = None
    allow_unfused: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"counts": dict(self.counts), "attention": self.attention}
        data |= {key: getattr(self, key) for key in ("mode", "expected_attention", "complete", "allow_unfused")
                 if getattr(self, key) is not None}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionRecord:
        return cls(dict(data["counts"]), data["attention"], data["expected_attention"], data["mode"],
                   data.get("complete"), data.get("allow_unfused"))


@dataclass(frozen=True, eq=False)
class ParityRecord(_Record):
    """A graph's agreement with PyTorch at the probes, judged against its tolerance (`GraphParity.to_dict()`).

    The gate's headline figures are typed; `figures` keeps every other key as written (per probe set,
    tie-aware agreement, the tolerance applied), so a report round-trips unchanged."""

    passed: bool
    masked_positions: int
    max_abs_logit: float | None
    top1_agreement: float
    topk_overlap: float
    topk_set_equal: float
    gated_on: str | None = None
    provider: str | None = None
    failures: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    _TYPED = ("passed", "masked_positions", "max_abs_logit", "top1_agreement", "topk_overlap", "topk_set_equal",
              "gated_on", "provider", "failures")

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.figures)  # the report's own key order first, as GraphParity wrote it
        for key in self._TYPED:
            value = getattr(self, key)
            if key == "failures":
                if value or "failures" in self.figures:
                    data[key] = list(value)
            elif value is not None or key in self.figures or key == "max_abs_logit":
                data[key] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParityRecord:
        figures = {key: value for key, value in data.items()}  # keeps the order; typed keys overwritten on output
        return cls(bool(data["passed"]), data["masked_positions"], data["max_abs_logit"], data["top1_agreement"],
                   data["topk_overlap"], data["topk_set_equal"], data.get("gated_on"), data.get("provider"),
                   tuple(data.get("failures") or ()), figures)


@dataclass(frozen=True, eq=False)
class Int8Trial(_Record):
    """One int8 recipe the export tried against the gate, as the manifest's `recipes_tried` lists it."""

    recipe: str
    passed: bool
    top1_agreement: float
    topk_overlap: float
    head: str | None = None
    max_abs_logit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"recipe": self.recipe}
        if self.head is not None:
            data["head"] = self.head
        data |= {"passed": self.passed, "top1_agreement": self.top1_agreement, "topk_overlap": self.topk_overlap}
        if self.max_abs_logit is not None:
            data["max_abs_logit"] = self.max_abs_logit
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Int8Trial:
        return cls(data["recipe"], bool(data["passed"]), data["top1_agreement"], data["topk_overlap"],
                   data.get("head"), data.get("max_abs_logit"))


@dataclass(frozen=True, eq=False)
class VectorParity(_Record):
    """A sparse or embed graph's agreement with PyTorch at the probes (`verify.tasks.TaskParity.to_dict()`)."""

    passed: bool
    texts: int
    max_abs: float
    min_cosine: float
    gated_on: str | None = None
    provider: str | None = None
    failures: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    _TYPED = ("passed", "texts", "max_abs", "min_cosine", "gated_on", "provider", "failures")

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.figures)
        for key in self._TYPED:
            value = getattr(self, key)
            if key == "failures":
                data[key] = list(value)
            elif value is not None:
                data[key] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VectorParity:
        return cls(bool(data["passed"]), data["texts"], data["max_abs"], data["min_cosine"], data.get("gated_on"),
                   data.get("provider"), tuple(data.get("failures") or ()), dict(data))


@dataclass(frozen=True)
class GraphEntry:
    file: str
    form: str       # "logits" | "fill-mask" | "sparse" | "embed"
    precision: str  # "fp32" | "fp16" | "int8" | "bf16"
    family: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: Tolerance | VectorTolerance  # VectorTolerance for the sparse and embed forms
    fusion: FusionRecord | None = None
    parity: ParityRecord | VectorParity | None = None  # once verified
    weight_bytes: int | None = None
    recipe: str | None = None    # int8 only
    recipes_tried: tuple[Int8Trial, ...] = ()
    data_file: str | None = None  # the graph's weights, when they are kept in ONNX external data
    head: str | None = None      # int8 only: the MLM decoder, "float", "int8-blockwise" or (sparse) "int8-dynamic"
    head_input: str | None = None  # bf16 only: the tensor where the float32 head begins (runtime.openvino)
    task: TaskOptions | None = None  # sparse and embed only

    @property
    def mask_tolerance(self) -> Tolerance:
        """The logits and fill-mask forms' gate (a programming error on a task graph)."""
        if not isinstance(self.tolerance, Tolerance):
            raise TypeError(f"a {self.form} graph has a vector gate")
        return self.tolerance

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file": self.file, "form": self.form, "precision": self.precision, "family": self.family,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "tolerance": self.tolerance.to_dict(),
            "fusion": None if self.fusion is None else self.fusion.to_dict(),
            "parity": None if self.parity is None else self.parity.to_dict()}
        if self.weight_bytes is not None:
            data["weight_bytes"] = self.weight_bytes
        if self.data_file is not None:
            data["data_file"] = self.data_file
        if self.recipe is not None:
            data["recipe"] = self.recipe
            data["recipes_tried"] = [trial.to_dict() for trial in self.recipes_tried]
        if self.head is not None:
            data["head"] = self.head
        if self.head_input is not None:
            data["head_input"] = self.head_input
        if self.task is not None:
            data["task"] = self.task.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphEntry:
        vector = data["form"] in TASK_FORMS
        parity: ParityRecord | VectorParity | None = None
        if data.get("parity") is not None:
            parity = (VectorParity if vector else ParityRecord).from_dict(data["parity"])
        return cls(data["file"], data["form"], data["precision"], data["family"],
                   tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                   (VectorTolerance if vector else Tolerance).from_dict(data["tolerance"]),
                   None if data.get("fusion") is None else FusionRecord.from_dict(data["fusion"]),
                   parity, data.get("weight_bytes"), data.get("recipe"),
                   tuple(Int8Trial.from_dict(t) for t in data.get("recipes_tried") or ()),
                   data.get("data_file"), data.get("head"), data.get("head_input"),
                   None if data.get("task") is None else TaskOptions.from_dict(data["task"]))


@dataclass(frozen=True)
class Manifest:
    """Everything an artifact promises: where it came from, its model, tokenizer, graphs and files."""

    name: str
    family: str
    source: SourceInfo
    model: ModelInfo
    tokenizer: TokenizerInfo
    versions: dict[str, str]
    opset: int
    probe_set: str | None
    graphs: dict[str, GraphEntry]
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def fill_mask_graphs(self) -> dict[str, GraphEntry]:
        return {name: g for name, g in self.graphs.items() if g.form == FILL_MASK}

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the artifact's graphs serve, in TASKS order."""
        return tuple(task for task in TASKS if any(g.form == task for g in self.graphs.values()))

    def with_graph_added(self, name: str, entry: GraphEntry) -> Manifest:
        return replace(self, graphs=self.graphs | {name: entry})

    def with_graph(self, name: str, **changes: Any) -> Manifest:
        return replace(self, graphs=self.graphs | {name: replace(self.graphs[name], **changes)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version, "name": self.name, "created": self.created,
            "family": self.family, "source": asdict(self.source) | {"weights_files": list(self.source.weights_files)},
            "model": asdict(self.model),
            "tokenizer": {"file": self.tokenizer.file, "scheme": self.tokenizer.scheme,
                          "special_tokens": dict(self.tokenizer.special_tokens),
                          "special_ids": dict(self.tokenizer.special_ids),
                          "all_special_ids": list(self.tokenizer.all_special_ids)},
            "versions": dict(self.versions), "opset": self.opset, "probe_set": self.probe_set,
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "files": {name: asdict(f) for name, f in self.files.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """From a dict that already passed the schema."""
        t = data["tokenizer"]
        return cls(
            name=data["name"], family=data["family"],
            source=SourceInfo(**{k: data["source"].get(k) for k in ("kind", "location", "revision",
                                                                    "weights_sha256")},
                              weights_files=tuple(data["source"].get("weights_files") or ())),
            model=ModelInfo(**{k: data["model"][k] for k in ModelInfo.__dataclass_fields__ if k in data["model"]}),
            tokenizer=TokenizerInfo(t["file"], t["scheme"], dict(t["special_tokens"]), dict(t["special_ids"]),
                                    tuple(t["all_special_ids"])),
            versions=dict(data["versions"]), opset=data["opset"], probe_set=data.get("probe_set"),
            graphs={name: GraphEntry.from_dict(g) for name, g in data["graphs"].items()},
            files={name: FileEntry(f["sha256"], f["size"]) for name, f in data["files"].items()},
            created=data.get("created", ""), format_version=data["format_version"])


@cache
def _validator(version: int) -> Any:
    import jsonschema

    schema = json.loads(resources.files("mlm_export.schemas").joinpath(SCHEMAS[version]).read_text(encoding="utf-8"))
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


def read_manifest(directory: Path | str) -> Manifest:
    """The validated manifest of an artifact directory. Pure data: no hashes are checked and no
    signature; `Artifact.open(directory, public_key=...)` does both."""
    return read_manifest_bytes(directory)[0]


def read_manifest_bytes(directory: Path | str) -> tuple[Manifest, bytes]:
    """The validated manifest and the exact bytes it was parsed from (what a signature covers)."""
    data = raw_manifest_bytes(directory)
    return parse_manifest_bytes(data, directory), data


def raw_manifest_bytes(directory: Path | str) -> bytes:
    """The manifest file's bytes, unparsed, after the checks that make reading it safe: a directory
    that holds one, no link out of it, a size a manifest can have."""
    directory = Path(directory)
    if directory.is_file():
        raise ArtifactError(f"{directory} is a file; an artifact is the directory that holds {MANIFEST}")
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; export one with: mlm-export MODEL --out {directory}")
    root = directory.resolve()
    if not (root / MANIFEST).is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not an mlm-export artifact")
    path = path_inside(root, MANIFEST, "the manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{directory / MANIFEST} is {path.stat().st_size / 1e6:.0f} MB; an mlm-export "
                            "manifest is a few KB. It is not one of ours: re-export the artifact")
    return path.read_bytes()


def parse_manifest_bytes(data: bytes, directory: Path | str) -> Manifest:
    """The manifest `data` (read from `directory`), validated and with every file it names confined there."""
    directory = Path(directory)
    manifest = Manifest.from_dict(parse_manifest(data, directory / MANIFEST))
    _check_consistency(manifest, directory / MANIFEST)
    root = directory.resolve()
    for name in manifest.files:
        path_inside(root, name, "the file")  # a link out is refused now, not only when its file is used
    return manifest


def parse_manifest(data: bytes, origin: Path | str) -> dict[str, Any]:
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
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(f"{origin} has format_version {version}, newer than the {FORMAT_VERSION} this "
                            "mlm-export reads: upgrade mlm-export")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SCHEMAS:
        *older, newest = sorted(SCHEMAS)
        raise ArtifactError(f"{origin} has format_version {version!r}; this mlm-export reads "
                            f"{', '.join(map(str, older))} and {newest}. Re-export with this version.")
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(version).iter_errors(manifest))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{origin} is malformed at {key}: {error.message}; re-export the artifact")
    return manifest


def _check_consistency(manifest: Manifest, origin: Path) -> None:
    """What a schema cannot say: names plain and listed, token ids inside the vocabulary, a family
    name and graphs of the manifest's own family. The family need not be one this version knows."""
    vocab = manifest.model.vocab_size
    tokenizer = manifest.tokenizer
    for role, token_id in tokenizer.special_ids.items():
        if token_id >= vocab:
            raise ArtifactError(f"{origin}: tokenizer.special_ids.{role} is {token_id}, outside the "
                                f"vocabulary (model.vocab_size {vocab}); re-export the artifact")
    if any(i >= vocab for i in tokenizer.all_special_ids):
        raise ArtifactError(f"{origin}: tokenizer.all_special_ids has an id outside the vocabulary "
                            f"(model.vocab_size {vocab}); re-export the artifact")
    if not re.fullmatch(FAMILY_NAME, manifest.family):  # the schema's `$` would let a final newline through
        raise ArtifactError(f"{origin}: family is {manifest.family!r}, not a family name; re-export the artifact")
    for name in manifest.files:
        check_plain_name(name, f"{origin}: files")
    named = [(f"graphs.{graph}.file", entry.file) for graph, entry in manifest.graphs.items()]
    named += [(f"graphs.{graph}.data_file", entry.data_file) for graph, entry in manifest.graphs.items()
              if entry.data_file is not None]
    named.append(("tokenizer.file", tokenizer.file))
    for key, name in named:
        check_plain_name(name, f"{origin}: {key}")
        if name not in manifest.files:
            raise ArtifactError(f"{origin}: {key} names {name!r}, which has no sha256 under 'files'; "
                                "re-export the artifact")
    for graph, entry in manifest.graphs.items():
        if entry.data_file is not None and entry.data_file != entry.file + ".data":
            raise ArtifactError(f"{origin}: graphs.{graph}.data_file is {entry.data_file!r}; a graph's external "
                                f"data is {entry.file + '.data'!r}, beside it. Re-export the artifact")
        if entry.family != manifest.family:
            raise ArtifactError(f"{origin}: graphs.{graph}.family is {entry.family!r}, but the artifact "
                                f"is {manifest.family!r}; re-export the artifact")
        if "input_ids" not in entry.input_names or "attention_mask" not in entry.input_names:
            raise ArtifactError(f"{origin}: graphs.{graph}.inputs lack input_ids or attention_mask")
        if entry.form == "fill-mask" and graph != entry.precision:  # a variant is named by its precision
            raise ArtifactError(f"{origin}: graphs.{graph} has precision {entry.precision!r}; a fill-mask variant "
                                "is named after its precision. Re-export the artifact")
        if entry.form in TASK_FORMS and graph != graph_name(entry.form, entry.precision):
            raise ArtifactError(f"{origin}: graphs.{graph} is a {entry.form} graph of precision {entry.precision!r}, "
                                f"so it must be named {graph_name(entry.form, entry.precision)!r}. "
                                "Re-export the artifact")
        if entry.form == "sparse" and (entry.task is None or entry.task.pooling is None):
            raise ArtifactError(f"{origin}: graphs.{graph} has no task.pooling; re-export the artifact")
        if entry.form == "embed" and (entry.task is None or entry.task.layer is None
                                      or entry.task.layer > manifest.model.num_layers):
            raise ArtifactError(f"{origin}: graphs.{graph} has no task.layer between 0 and model.num_layers; "
                                "re-export the artifact")
        if entry.precision == "bf16" and not entry.head_input and entry.form not in TASK_FORMS:
            # else OpenVINO would run the head in bf16 too (a sparse or embed graph runs whole in bf16, gated so)
            raise ArtifactError(f"{origin}: graphs.{graph} has no head_input, where its float32 MLM head "
                                "begins; re-export the artifact")
        if entry.form == "fill-mask" and "top_k" not in entry.input_names:
            raise ArtifactError(f"{origin}: graphs.{graph}.inputs lack top_k, which every fill-mask graph takes")


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write through a temporary name, so a reader never sees half a manifest."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
