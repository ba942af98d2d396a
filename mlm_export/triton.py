"""A Triton Inference Server model repository (onnxruntime backend) written from an artifact.

Torch-free and tritonclient-free: `config.pbtxt` is rendered here as protobuf text, so a serving
image needs nothing beyond mlm-export's core to prepare its repository.

The contract the predictor relies on holds here too: every input and output (name, data type,
dims) comes from the graph's own `TensorSpec`s in the manifest, never from a list of known names,
and the graph is copied only through a sha256-checked path. Batching follows from the axes: Triton's
dynamic batcher concatenates requests along the first axis and splits the answers the same way, so
it is offered only for a graph whose every tensor starts with the batch axis. The fill-mask form
answers per mask (first axis "num_masks"), so it is served with `max_batch_size: 0` and the client
sends a whole batch in one request.

A model appears in the repository with one rename: it is built in a temporary directory inside the
repository (same filesystem) and renamed to `<repo>/<name>` only when complete. An existing
`<repo>/<name>` is never replaced. Triton takes every subdirectory of a repository for a model, so a
build left behind by a killed process (kill -9 cannot be caught) would stop Triton's start-up: each
build holds a lock on a marker, and the next write into the same repository removes builds whose
lock is free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .artifact.handle import Artifact
from .artifact.staging import make_directories, remove_directories
from .errors import ArtifactError, InputError, StorageError
from .interrupts import deferred_signals
from .manifest import GraphEntry, Manifest, TensorSpec
from .variants import PREFERENCE, runs_on, triton_device_backend, why_not

log = logging.getLogger("mlm_export")

BACKEND = "onnxruntime"
VERSION = "1"  # Triton serves numbered version directories; an artifact is one version
MODEL_FILE = "model.onnx"  # the onnxruntime backend's default_model_filename
CONFIG_FILE = "config.pbtxt"
TOKENIZER_FILE = "tokenizer.json"  # beside config.pbtxt; Triton reads only the config and the version folders
BATCH_AXIS = "batch"
DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# manifest dtype -> Triton data type; float16 and int32 are not in manifests yet, but cost nothing here
DATA_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "bool": "TYPE_BOOL", "float16": "TYPE_FP16",
              "int32": "TYPE_INT32"}
# Triton names a model by its directory and puts the name in URLs (/v2/models/NAME/infer)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_BUILD = re.compile(r"^\..+\.mlm-export-triton-tmp-\d+-[0-9a-f]{8}$")
_MARKER = ".mlm-export-build"  # inside a build: holds the builder's pid, locked while it runs


@dataclass(frozen=True)
class TritonModel:
    """What was written: enough for a caller to print it, or to point Triton at it."""

    name: str
    directory: Path       # <repo>/<name>
    config_path: Path     # <repo>/<name>/config.pbtxt
    tokenizer_path: Path  # <repo>/<name>/tokenizer.json, for clients
    model_path: Path      # <repo>/<name>/1/model.onnx
    data_path: Path | None  # the graph's external data beside model.onnx, when it has some
    variant: str
    form: str             # "fill-mask" | "logits"
    max_batch_size: int
    device: str           # "cpu" | "gpu"
    instances: int


def default_model_name(manifest_name: str) -> str:
    """The manifest's name with every character Triton's URLs would not carry replaced by "_"."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", manifest_name).lstrip(".")[:200]
    return name or "model"


def check_model_name(name: object) -> str:
    """A name that is one plain directory in the repository and a clean URL segment."""
    if not isinstance(name, str) or not name:
        raise InputError(f"the Triton model name must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name:
        raise InputError(f"the Triton model name {name!r} contains a path separator; a model is one "
                         "directory directly inside the repository")
    if name.startswith("."):
        raise InputError(f"the Triton model name {name!r} starts with '.'; such names are hidden directories "
                         "(and '.', '..' leave the repository)")
    if not _NAME.match(name):
        raise InputError(f"the Triton model name {name!r} may only hold letters, digits, '_', '.' and '-' "
                         "(at most 200): Triton puts it in request URLs")
    return name


def select_variant(manifest: Manifest, variant: str | None) -> str:
    """The graph to serve: the one asked for, else fp32 fill-mask, else the first fill-mask graph, else the
    fp32 graph of the artifact's task (sparse, embed) when it has one task."""
    if variant is not None:
        if not isinstance(variant, str):
            raise InputError(f"variant must be a name such as 'fp32' or None, got {variant!r}")
        if variant not in manifest.graphs:
            raise ArtifactError(f"variant {variant!r} is not in the artifact {manifest.name!r}; it has "
                                f"{', '.join(sorted(manifest.graphs))}")
        return variant
    fill_mask = manifest.fill_mask_graphs
    if "fp32" in fill_mask:
        return "fp32"
    if fill_mask:
        return next(iter(fill_mask))
    tasks = [task for task in manifest.tasks if task != "fill-mask"]
    if len(tasks) == 1 and f"{tasks[0]}.fp32" in manifest.graphs:
        return f"{tasks[0]}.fp32"
    raise ArtifactError(f"the artifact {manifest.name!r} has no fill-mask graph; pass a variant, one of "
                        f"{', '.join(sorted(manifest.graphs))}")


def instance_kind(graph: GraphEntry, variant: str, device: str) -> str:
    """Triton's instance kind for `device`; int8 is refused on GPU, where its int8 ops run on the CPU, and
    bf16 everywhere, since only OpenVINO runs it as built."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    backend = triton_device_backend(device)
    precision = "int8" if variant == "int8" else graph.precision
    if runs_on(precision, backend):
        return DEVICES[device]
    if precision == "bf16":
        raise InputError(f"variant {variant!r} is bf16, which is OpenVINO's (encoder in bf16, head in float32): "
                         "Triton's onnxruntime backend would run it whole in float32, unfused and slower than "
                         "fp32. Serve variant int8 or fp32 (from an artifact that has them), or use "
                         "OnnxMaskFiller(providers='openvino')")
    other = "cpu" if device == "gpu" else "gpu"
    raise InputError(f"variant {variant!r} is {precision}, which is not for {device.upper()} instances: "
                     f"{why_not(precision, backend)}. Serve variant "
                     f"{' or '.join(PREFERENCE.get(('fill-mask', backend), ('fp32',)))} on {device.upper()}, "
                     f"or {variant} with device {other}")


def batchable(graph: GraphEntry) -> bool:
    """True when every input and output starts with the batch axis, as Triton's batcher assumes."""
    return all(t.shape and t.shape[0] == BATCH_AXIS for t in (*graph.inputs, *graph.outputs))


def check_batching(graph: GraphEntry, variant: str, max_batch_size: int) -> None:
    """Refuse server-side batching for a graph whose answers cannot be split back per request."""
    if max_batch_size == 0 or batchable(graph):
        return
    others = [f"{t.name} ({'a scalar' if not t.shape else f'first axis {t.shape[0]!r}'})"
              for t in (*graph.inputs, *graph.outputs) if not t.shape or t.shape[0] != BATCH_AXIS]
    hint = (" The fill-mask form answers per mask, not per text." if graph.form == "fill-mask" else "")
    raise InputError(f"max_batch_size={max_batch_size} asks Triton to batch requests along the first axis, but "
                     f"the {variant} graph has tensors that do not start with {BATCH_AXIS!r}: "
                     f"{', '.join(others)}, so a batched answer could not be split back into requests.{hint} "
                     "Use max_batch_size=0 (the client sends a whole batch in one request)"
                     + (", or variant 'logits'" if graph.form == "fill-mask" else ""))


def config_text(graph: GraphEntry, name: str, variant: str, max_batch_size: int = 0, device: str = "cpu",
                instances: int = 1) -> str:
    """The model's config.pbtxt (protobuf text of Triton's ModelConfig), from the graph's TensorSpecs."""
    check_model_name(name)
    _check_count("max_batch_size", max_batch_size, 0)
    _check_count("instances", instances, 1)
    kind = instance_kind(graph, variant, device)
    check_batching(graph, variant, max_batch_size)
    batched = max_batch_size > 0
    lines = [f"name: {_quote(name)}", f"backend: {_quote(BACKEND)}", f"max_batch_size: {max_batch_size}"]
    for field, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        blocks = [_tensor(spec, batched) for spec in tensors]
        lines += [f"{field} [", ",\n".join(blocks), "]"]
    lines += ["instance_group [", "  {", f"    kind: {kind}", f"    count: {instances}", "  }", "]"]
    if batched:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _tensor(spec: TensorSpec, batched: bool) -> str:
    data_type = DATA_TYPES.get(spec.dtype)
    if data_type is None:
        raise ArtifactError(f"tensor {spec.name!r} has dtype {spec.dtype!r}, which has no Triton data type here "
                            f"(known: {', '.join(DATA_TYPES)})")
    axes = spec.shape[1:] if batched else spec.shape
    dims = [-1 if isinstance(axis, str) else int(axis) for axis in axes]
    lines = ["  {", f"    name: {_quote(spec.name)}", f"    data_type: {data_type}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:  # Triton needs non-empty dims: a scalar (per request) is sent as [1] and reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "\n".join(lines + ["  }"])


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8; quotes, backslashes and controls escaped)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _check_count(what: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"{what} must be an integer >= {least}, got {value!r}")


def write_triton_repository(artifact: Path | str, repo: Path | str, variant: str | None = None,
                            name: str | None = None, max_batch_size: int = 0, instances: int = 1,
                            device: str = "cpu", *, public_key: object = None) -> TritonModel:
    """Write `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.onnx` for Triton's onnxruntime backend, and
    `<repo>/<name>/tokenizer.json` beside them for clients (the backend takes token ids).

    Every setting is checked before anything is written; the graph (and its external data) is copied
    only after matching the manifest's sha256 (and, with `public_key`, the manifest's signature).
    `<repo>` is created if missing; `<repo>/<name>` must not exist. On any failure nothing is left.
    """
    artifact, repo = Path(artifact), Path(repo)
    if isinstance(device, str):
        device = device.lower()
    _refuse_link(repo)
    opened = Artifact.open(artifact, public_key=public_key)
    manifest = opened.present  # a slim copy: the graphs it holds
    opened.refuse_left_out(variant)
    variant = select_variant(manifest, variant)
    graph = manifest.graphs[variant]
    name = check_model_name(default_model_name(manifest.name) if name is None else name)
    text = config_text(graph, name, variant, max_batch_size, device, instances)
    target = repo / name
    _refuse_existing(target)
    made = make_directories(repo)
    try:
        _remove_stale_builds(repo)
        with _build(repo, name) as build:
            version = build / VERSION
            version.mkdir()
            for file in (graph.file, graph.data_file):
                if file is not None:  # the data keeps its name: the graph refers to it by that name
                    with opened.verified_path(file) as source:
                        shutil.copyfile(source, version / (MODEL_FILE if file == graph.file else file))
            (build / CONFIG_FILE).write_text(text, encoding="utf-8")
            # the onnxruntime backend takes token ids: the client tokenizes with the very tokenizer of the graph
            (build / TOKENIZER_FILE).write_bytes(opened.checked_bytes(manifest.tokenizer.file))
            _publish(build, target)
    except OSError as exc:
        remove_directories(made)
        raise StorageError(f"cannot write the Triton model {target}: {exc.strerror or exc}. Nothing was "
                           "left in the repository") from exc
    except BaseException:
        remove_directories(made)
        raise
    return TritonModel(name=name, directory=target, config_path=target / CONFIG_FILE,
                       tokenizer_path=target / TOKENIZER_FILE,
                       model_path=target / VERSION / MODEL_FILE,
                       data_path=None if graph.data_file is None else target / VERSION / graph.data_file,
                       variant=variant, form=graph.form, max_batch_size=max_batch_size, device=device,
                       instances=instances)


def _refuse_link(repo: Path) -> None:
    """The repository is written where it is named, never through a symbolic link (one to /etc would
    have Triton models created there): the user names the real directory if that is where it belongs."""
    if repo.is_symlink():
        raise ArtifactError(f"{repo} is a symbolic link (to {os.readlink(repo)}); mlm-export writes a Triton "
                            f"repository only into the directory named, never through a link. Pass the real "
                            f"directory ({repo.resolve()}) if the repository belongs there")


def _refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        raise ArtifactError(f"{target} already exists; mlm-export never replaces a model in a Triton "
                            "repository. Pick another name with --name (name= in Python), or remove it first")


@contextlib.contextmanager
def _build(repo: Path, name: str) -> Iterator[Path]:
    """A marked, locked directory in `repo`, removed with its contents when the block ends."""
    while True:
        build = repo / f".{name[:64]}.mlm-export-triton-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            build.mkdir()  # not mkdtemp: its mode 0700 would keep a Triton running as another user out
            break
        except FileExistsError:
            continue
    try:
        with open(build / _MARKER, "w") as marker:
            with contextlib.suppress(OSError):  # a filesystem without locks: never healed, still correct
                fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
            marker.write(str(os.getpid()))
            marker.flush()
            yield build
    finally:
        with deferred_signals():
            shutil.rmtree(build, ignore_errors=True)


def _publish(build: Path, target: Path) -> None:
    """Rename the finished build to `target`; the rename cannot replace a file or a non-empty directory."""
    with deferred_signals():
        _refuse_existing(target)  # it may have appeared while we copied
        (build / _MARKER).unlink()
        try:
            os.rename(build, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise ArtifactError(f"{target} appeared while the model was being written; nothing was "
                                    "replaced. Pick another name with --name, or remove it first") from exc
            raise


def _remove_stale_builds(repo: Path) -> None:
    """Remove builds whose writer is gone: its lock is free. Triton would take one for a model."""
    for entry in sorted(repo.iterdir()):
        if not _BUILD.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            with open(entry / _MARKER, "r+") as marker:
                fcntl.flock(marker.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not marker.read().strip():
                    continue  # created, not yet locked by its writer: it may be alive
                shutil.rmtree(entry, ignore_errors=True)
                log.warning("removed %s, left in the Triton repository by a killed mlm-export", entry)
        except OSError:
            continue  # locked (its writer runs), no marker (not ours, or publishing), or no locks here
