"""The export pipeline: source → model → trace → fuse → precision variants → verify, into an
atomically written artifact."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import gc
import importlib.metadata
import logging
import platform
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..artifact.files import file_entries
from ..config import LOGITS_TOLERANCE, TOLERANCES, ExportConfig
from ..errors import ExportError, ParityError, ProviderError
from ..manifest import (
    FusionRecord,
    GraphEntry,
    Int8Trial,
    Manifest,
    ModelInfo,
    ParityRecord,
    SourceInfo,
    TokenizerInfo,
    VectorParity,
    format_for,
    write_manifest,
)
from ..progress import stage
from ..runtime.openvino import cpu_has_bf16
from ..artifact.staging import atomic_directory, check_destination, estimate_free_space, prepare_destination
from ..verify import (
    ARTIFACT_PROBES,
    ARTIFACT_SET,
    GraphParity,
    ParityHarness,
    ProbeSpec,
    VerifyReport,
    choose_probe_set,
    runtime_of,
)
from ..passes.fp16 import to_fp16
from ..passes.fuse import FusionReport, fuse, fused_op_counts
from ..passes.head_rows import gather_head_rows
from ..passes.graph_file import data_path, initializer_bytes, load_graph, save_graph, uses_external_data
from ..passes.int8 import (
    HEAD_BLOCKWISE,
    HEAD_BLOCKWISE_MIN_WEIGHTS,
    HEAD_FLOAT,
    INT8_RECIPES,
    blockwise_head,
    decoder_weights,
    distinct_recipe,
    find_int8_recipe,
    to_int8,
)
from ..passes.portable import check_openvino_reads, write_portable
from ..verify.tasks import TaskHarness, TaskParity
from .model import load_model, model_facts
from .source import ResolvedSource, parse_source, require_export_extra, resolve_spec
from .tasks import TaskPlan, build_tasks, trace_parts
from .tokenizer import LoadedTokenizer, load_tokenizer
from .trace import export_fill_mask, export_logits, graph_io

log = logging.getLogger("mlm_export")

LOGITS_FILE = "model.onnx"
FILL_MASK_FILE = "fill_mask.{precision}.onnx"
TIED_WEIGHT_SLACK = 1.05  # a graph may exceed the float32 parameter bytes by 5%, not by a second matrix
_VERSIONED = ("mlm-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu",
              "tokenizers", "optimum-onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    report: VerifyReport


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def export_model(config: ExportConfig) -> ExportResult:
    """Export, fuse and verify MODEL; the artifact appears only if every graph passes its gate.

    Every check that can fail fast (destination, source, family, disk space, a writable parent)
    runs before the model is loaded; an interruption or failure at any stage leaves nothing behind.
    """
    require_export_extra()
    if config.bf16:
        require_bf16_runtime()
    spec = parse_source(config.model, config.revision)
    out = Path(config.out) if config.out else Path("models") / spec.default_name
    local = [Path(spec.location)] if spec.kind == "local" else []
    prepare_destination(out, config.force, local)
    with atomic_directory(out, config.force, local) as tmp:
        source = resolve_spec(spec)  # a hub download happens only once the destination is known good
        check_destination(out, config.force, [source.model_dir])
        estimate_free_space(tmp.parent.parent, disk_needed(source, config))
        with stage(f"loading {source.spec.location} ({source.family.name}) from {source.model_dir}"):
            model = load_model(source, attn_implementation=source.family.attn_implementation)
        tokens = load_tokenizer(source)
        traced = _trace(model, tokens, source, config, tmp)
        del model  # freed before fusion, which holds graphs of the model's size; the reference below is a fresh load
        _release_memory()
        manifest = _build(traced, tokens, source, config, tmp)
        _release_memory()  # fusion's copies of the graph, before the reference and the sessions load
        with stage("loading the PyTorch reference (eval mode)"):
            reference = load_model(source)
        harness = ParityHarness(manifest, tokens.tokenizer, reference, list(config.probe_texts) or None,
                                texts_name=ARTIFACT_SET)
        task_harness = (TaskHarness(manifest, harness.batches, reference, (traced.plan.pooling,) if "sparse" in
                                    traced.plan.tasks else (), (traced.plan.layer,) if "embed" in traced.plan.tasks
                                    else ()) if traced.plan.tasks else None)
        del reference
        judged: dict[str, GraphParity | TaskParity] = {}  # graphs a search (int8) or the task build judged
        if config.int8 and "fp32" in manifest.graphs:
            manifest, fill_judged = _int8(manifest, harness, config, tmp)
            judged |= fill_judged
        if "fp32" in manifest.graphs:  # last: fp16 and int8 were converted from the whole fp32 graph
            _head_rows(tmp / manifest.graphs["fp32"].file, manifest, "fp32")
        if task_harness is not None:
            int8 = manifest.graphs.get("int8")  # the recipe fill-mask's search kept, when one passed
            kept = int8.recipe if int8 is not None and judged.get("int8") and judged["int8"].passed else None
            manifest, task_judged = build_tasks(manifest, traced.plan, source.family, config, traced.config,
                                                task_harness, harness.calibration_rows(), tmp, kept)
            judged |= task_judged
        if config.bf16 and "bf16" in manifest.graphs:
            bf16 = manifest.graphs["bf16"]
            with stage(f"checking that OpenVINO reads {bf16.file} as ONNX Runtime does (float32)"):
                check_openvino_reads(tmp / bf16.file, bf16.head_input, bf16.input_names,
                                     [b for b in harness.batches if b.probe_set == "shapes"][:3])
        manifest = replace(manifest, files=file_entries(tmp))
        report = VerifyReport(str(tmp), [])
        for name, entry in manifest.graphs.items():
            parity = judged.get(name) or harness.check(tmp / entry.file, name, entry, runtime_of(entry))
            report.graphs.append(parity)
            record = (VectorParity if isinstance(parity, TaskParity) else ParityRecord).from_dict(parity.to_dict())
            manifest = manifest.with_graph(name, parity=record)
        if not report.passed:
            raise ParityError("parity check failed; nothing was written\n" + report.summary(), report)
        manifest = replace(manifest, format_version=format_for(manifest.graphs))
        write_manifest(tmp, manifest)
    log.info("wrote %s", out)
    return ExportResult(out, manifest, replace(report, artifact=str(out)))


def require_bf16_runtime() -> None:
    """--bf16 is judged on OpenVINO in bf16: refuse before any slow work where that cannot happen."""
    if not cpu_has_bf16():
        raise ProviderError("--bf16 needs a CPU that computes in bf16 (AVX-512 BF16 or AMX), so that its gate "
                            "judges what it will run; OpenVINO finds neither here. Export the bf16 variant on "
                            "such a CPU, or leave out --bf16")


def _release_memory() -> None:
    """Collect, then hand freed heap back to the system: without it the process kept fusion's peak
    (13 GB for a 2.2 GB model) while it loaded the reference model and sessions on top."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere a no-op


def disk_needed(source: ResolvedSource, config: ExportConfig) -> int:
    """Bytes the build directory holds at its peak, with float32 weights P.

    The logits form and the fused fp32 graph (P each), and the fused graph's unfused input (P) are
    on disk together, with 0.3 P of slack; fp16 adds 0.5 P; int8 adds its graph and the quantizer's
    full-size intermediate (1.5 P); bf16 keeps the unfused graph (P).
    """
    factor = 3.3 + (0.5 if config.fp16 else 0.0) + (1.5 if config.int8 else 0.0) + (1.0 if config.bf16 else 0.0)
    # each task beside fill-mask: its raw, fused and fp32 graphs (P each), fp16 0.5 P, int8 1.5 P
    factor += sum(3.0 + (0.5 if config.fp16 else 0.0) + (1.5 if config.int8 else 0.0)
                  for task in config.tasks if task != "fill-mask")
    return int(source.float32_weight_bytes * factor) + 32 * 1024 * 1024


@dataclass(frozen=True)
class _Traced:
    """What the build needs of the model once both forms are traced: the model itself can go."""

    config: Any            # the transformers config
    param_bytes: int       # float32 bytes, tied weights once
    raw_fill_mask: Path | None  # the unfused fill-mask graph, in the build's work folder (None: no fill-mask task)
    plan: TaskPlan         # the sparse and embed graphs to build


def _trace(model: Any, tokens: LoadedTokenizer, source: ResolvedSource, config: ExportConfig, tmp: Path) -> _Traced:
    family = source.family
    mask_id = tokens.ids["mask"]
    param_bytes = 4 * sum(p.numel() for p in model.parameters())  # tied weights counted once
    external = param_bytes > config.external_data_above
    if external:
        log.info("%.1f GB of weights: graphs keep them in ONNX external data (<graph>.data)", param_bytes / 1e9)
    _write_model_files(model, tokens, source, tmp)
    plan = TaskPlan.of(config, int(model.config.num_hidden_layers))
    export_logits(model, family, tmp / LOGITS_FILE, config.opset, mask_id, external)
    raw = None
    if "fill-mask" in config.tasks:
        work = tmp / ".work"
        work.mkdir()
        raw = work / "fill_mask.unfused.onnx"
        export_fill_mask(model, family, raw, config.opset, mask_id, tokens.special_id_list, external)
    trace_parts(model, family, plan, tmp, config.opset, mask_id, external)
    return _Traced(model.config, param_bytes, raw, plan)


def _build(traced: _Traced, tokens: LoadedTokenizer, source: ResolvedSource, config: ExportConfig,
           tmp: Path) -> Manifest:
    family, cfg, param_bytes, raw = source.family, traced.config, traced.param_bytes, traced.raw_fill_mask
    fp32 = tmp / FILL_MASK_FILE.format(precision="fp32")
    bf16 = tmp / FILL_MASK_FILE.format(precision="bf16")
    head_input = None
    fusion = None
    if raw is not None:
        fusion = fuse(raw, fp32, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                      num_layers=cfg.num_hidden_layers, mode=family.attention, allow_unfused=config.allow_unfused)
        if config.bf16:  # OpenVINO's variant, in standard ONNX ops: loaded once fusion's copies are freed
            _release_memory()
            head_input = write_portable(raw, bf16)
        shutil.rmtree(raw.parent)
        _release_memory()  # fusion's copies of the graph, before the fp16 conversion makes its own

    stored = initializer_bytes(fp32) if fusion is not None else 0
    for path in (tmp / LOGITS_FILE, fp32) if fusion is not None else (tmp / LOGITS_FILE,):
        weights = stored if path == fp32 else initializer_bytes(path)
        if weights > TIED_WEIGHT_SLACK * param_bytes:
            raise ExportError(f"{path.name} stores {weights / 1e6:.1f} MB of weights for "
                              f"{param_bytes / 1e6:.1f} MB of float32 parameters: a weight (likely the "
                              "tied decoder) is stored twice")
    if config.probe_texts:
        (tmp / ARTIFACT_PROBES).write_text("\n".join(config.probe_texts) + "\n", encoding="utf-8")

    base = Manifest(
        name=source.spec.default_name, family=family.name,
        source=SourceInfo(source.spec.kind, source.spec.location, source.spec.revision, source.weights_sha256,
                          tuple(p.name for p in source.weight_files)),
        model=ModelInfo(architecture=family.model_class, **model_facts(cfg, family),
                        float32_parameter_bytes=param_bytes, parameters=param_bytes // 4),
        tokenizer=TokenizerInfo("tokenizer.json", tokens.scheme, asdict(tokens.specials), dict(tokens.ids),
                                tokens.special_id_list),
        versions=library_versions(), opset=config.opset, probe_set=None, graphs={},
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    probe_set = ARTIFACT_SET if config.probe_texts else choose_probe_set(ProbeSpec.of(base), tokens.tokenizer)
    logits_io = graph_io(family, "logits", cfg.vocab_size)
    fill_io = graph_io(family, "fill-mask", cfg.vocab_size)
    logits = GraphEntry(LOGITS_FILE, "logits", "fp32", family.name, *logits_io, LOGITS_TOLERANCE,
                        data_file=_data_file(tmp / LOGITS_FILE))
    manifest = replace(base, probe_set=probe_set, graphs={"logits": logits})
    if fusion is None:  # no fill-mask task: its graphs are not built
        return manifest
    for precision in ("fp32", "fp16") if config.fp16 else ("fp32",):
        path = tmp / FILL_MASK_FILE.format(precision=precision)
        if precision == "fp16":
            to_fp16(fp32, path)
            _head_rows(path, manifest, precision)
        entry = GraphEntry(path.name, "fill-mask", precision, family.name, *fill_io, TOLERANCES[precision])
        manifest = _with_variant(manifest, precision, entry, path, fusion, stored, config)
    if config.bf16:
        entry = GraphEntry(bf16.name, "fill-mask", "bf16", family.name, fill_io[0], fill_io[1], TOLERANCES["bf16"],
                           head_input=head_input)
        manifest = _with_variant(manifest, "bf16", entry, bf16, fusion, stored, config)
    return manifest


def _with_variant(manifest: Manifest, precision: str, entry: GraphEntry, path: Path, fusion: FusionReport,
                  stored: int, config: ExportConfig) -> Manifest:
    """Add a fill-mask variant with its fused-op counts, after checking that no weight was duplicated."""
    weight_bytes = initializer_bytes(path)
    # bf16 is the unfused graph, as traced: it keeps small constants that fusion folds, so it is held to
    # the traced logits form's bound instead
    limit = TIED_WEIGHT_SLACK * stored if precision == "bf16" else stored
    if weight_bytes > limit:
        raise ExportError(f"{path.name} stores more weight bytes ({weight_bytes}) than the fp32 "
                          f"graph ({stored}): a tensor was duplicated during conversion")
    fused = None  # bf16 is unfused on purpose (OpenVINO fuses it itself): no fusion counts to show
    if precision == "fp32":
        fused = FusionRecord.from_dict(fusion.to_dict())
    elif precision != "bf16":  # counted in the graph itself: conversion must not have undone the fusion
        fused = FusionRecord.from_dict(FusionReport(fused_op_counts(path), fusion.expected_attention,
                                                    config.allow_unfused, fusion.mode).to_dict())
    return replace(manifest, graphs=manifest.graphs | {precision: replace(
        entry, fusion=fused, weight_bytes=weight_bytes, data_file=_data_file(path))})


def _head_rows(path: Path, manifest: Manifest, precision: str) -> None:
    """The last layer's tail at the head's rows only (`passes.head_rows`), checked against the graph as it
    was: to float32 rounding, fp16's, or (int8, whose activation scales then see fewer rows) by its gate."""
    tolerance = {"fp32": 1e-3, "fp16": 2e-2}.get(precision)
    done = gather_head_rows(path, manifest.tokenizer.special_ids["mask"], manifest.model.vocab_size, tolerance)
    if done.applied:
        log.info("%s: the last layer's tail (%d nodes) runs at the head's rows only", path.name, done.nodes)


def _data_file(graph: Path) -> str | None:
    return data_path(graph).name if data_path(graph).is_file() else None


def _int8(manifest: Manifest, harness: ParityHarness, config: ExportConfig,
          tmp: Path) -> tuple[Manifest, dict[str, GraphParity]]:
    """Quantize with the named recipe, or with the fastest one that passes the int8 gate, then try that
    one with a block-wise MLM decoder (`_try_blockwise_head`).

    The gate is the one verify applies, on the same probes and fresh reference; the kept graph's
    figures are returned so they are not computed twice.
    """
    fp32 = manifest.graphs["fp32"]
    path = tmp / FILL_MASK_FILE.format(precision="int8")
    entry = replace(fp32, file=path.name, precision="int8", tolerance=TOLERANCES["int8"], fusion=None,
                    parity=None, weight_bytes=None, data_file=None)
    if fp32.fusion is None:
        raise ExportError("the fp32 graph has no fusion record to quantize from")
    fusion = FusionReport(fp32.fusion.counts, fp32.fusion.expected_attention, bool(fp32.fusion.allow_unfused),
                          fp32.fusion.mode)
    judged: dict[str, GraphParity] = {}
    calibration = harness.calibration_rows()
    stored = manifest.graphs["fp32"].weight_bytes or 0
    if config.int8_recipe != "auto":  # exactly the recipe asked for, decoder float; the final check gates it
        to_int8(tmp / fp32.file, path, find_int8_recipe(config.int8_recipe), calibration)
        _head_rows(path, manifest, "int8")
        entry = replace(entry, recipe=config.int8_recipe, head=HEAD_FLOAT)
        return _with_variant(manifest, "int8", entry, path, fusion, stored, config), judged
    tried: list[Int8Trial] = []
    built = INT8_RECIPES[0].name  # dynamic: never skipped
    for recipe in INT8_RECIPES:
        if not distinct_recipe(tmp / fp32.file, recipe):
            log.info("int8 recipe %s: the same graph as another recipe here -> skipped", recipe.name)
            continue
        to_int8(tmp / fp32.file, path, recipe, calibration)
        _head_rows(path, manifest, "int8")
        built = recipe.name
        judged["int8"] = harness.check(path, "int8", entry, "cpu")
        tried.append(_trial(built, HEAD_FLOAT, judged["int8"]))
        if judged["int8"].passed:
            break
    # none passing leaves the most accurate recipe in place; the final check then fails the export
    head = HEAD_FLOAT
    if judged["int8"].passed:
        head = _try_blockwise_head(path, harness, entry, stored, tried, judged, manifest.model.vocab_size)
    entry = replace(entry, recipe=built, head=head, recipes_tried=tuple(tried))
    return _with_variant(manifest, "int8", entry, path, fusion, stored, config), judged


def _try_blockwise_head(path: Path, harness: ParityHarness, entry: GraphEntry, stored: int, tried: list[Int8Trial],
                        judged: dict[str, GraphParity], vocab_size: int) -> str:
    """The gated int8 graph at `path` once more with its decoder block-wise; kept only if it passes and
    stores no more weight bytes than fp32 (a tied table stays float for the input embedding, so a
    decoder far larger than the encoder could). Anything short of that leaves the float decoder."""
    weights = decoder_weights(path, vocab_size)
    if weights < HEAD_BLOCKWISE_MIN_WEIGHTS:
        log.info("int8: the MLM decoder (%d weights) stays float: below %d, not worth a trial",
                 weights, HEAD_BLOCKWISE_MIN_WEIGHTS)
        return HEAD_FLOAT
    trial = path.with_name(path.stem + ".head.onnx")
    try:
        blockwise_head(path, trial, vocab_size)
        if initializer_bytes(trial) > stored:
            log.warning("int8: the MLM decoder stays float: block-wise beside the tied float table, the "
                        "graph would store more weight bytes than fp32")
            return HEAD_FLOAT
        parity = harness.check(trial, "int8", entry, "cpu")
        tried.append(_trial(tried[-1].recipe, HEAD_BLOCKWISE, parity))
        if not parity.passed:
            return HEAD_FLOAT
        save_graph(load_graph(trial), path, uses_external_data(trial))
        judged["int8"] = parity
        return HEAD_BLOCKWISE
    except Exception as exc:  # an optional speed-up: the float decoder already passed the gate
        log.warning("int8: the MLM decoder stays float: its block-wise trial failed (%s)", exc)
        return HEAD_FLOAT
    finally:
        trial.unlink(missing_ok=True)
        data_path(trial).unlink(missing_ok=True)


def _trial(recipe: str, head: str, parity: GraphParity) -> Int8Trial:
    """One gated int8 attempt, as the manifest's `recipes_tried` lists it (and the log says it)."""
    gated = parity.gated.to_dict()
    log.info("int8 recipe %s, %s decoder: top-1 %.2f%%, top-%d overlap %.2f%% -> %s", recipe, head,
             100 * gated["top1_agreement"], parity.tolerance.top_k, 100 * gated["topk_overlap"],
             "passed" if parity.passed else "rejected")
    return Int8Trial(recipe, parity.passed, gated["top1_agreement"], gated["topk_overlap"], head,
                     gated["max_abs_logit"])


def _write_model_files(model: Any, tokens: LoadedTokenizer, source: ResolvedSource, tmp: Path) -> None:
    """config.json and tokenizer files, so transformers and optimum can load the directory too."""
    from transformers import PreTrainedTokenizerFast

    family = source.family
    config = copy.deepcopy(model.config)
    config.architectures = [family.model_class]
    config.save_pretrained(tmp)
    specials = tokens.specials
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokens.tokenizer, unk_token=specials.unk, sep_token=specials.sep,
        pad_token=specials.pad, cls_token=specials.cls, mask_token=specials.mask,
        model_max_length=family.usable_length(config))
    fast.save_pretrained(tmp)
    tokens.tokenizer.save(str(tmp / "tokenizer.json"))
    if source.vocab_file is not None:
        shutil.copyfile(source.vocab_file, tmp / "vocab.txt")
