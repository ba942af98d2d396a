"""The export pipeline: load → export → fuse → write → verify, into an atomically written artifact."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import importlib.metadata
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import file_entries
from ..config import FP32_TOLERANCE, TOLERANCES, ExportConfig
from ..errors import ExportError, ParityError
from .trace import export_fill_mask, export_logits
from .fuse import FusionReport, fuse
from .load import (
    SPECIAL_TOKENS,
    ResolvedSource,
    load_model,
    load_tokenizer,
    model_facts,
    parse_source,
    require_export_extra,
    resolve_spec,
)
from ..manifest import FORMAT_VERSION, write_manifest
from .precision import INT8_RECIPES, find_int8_recipe, fused_op_counts, to_fp16, to_int8
from ..staging import atomic_directory, check_destination, estimate_free_space, prepare_destination
from ..verify import (
    VerifyReport,
    build_probes,
    choose_probe_set,
    compare_graph,
    probe_spec,
    reference_logits,
    verify_artifact,
)

log = logging.getLogger("mlm_export")

LOGITS_FILE = "model.onnx"
FILL_MASK_FILE = "fill_mask.{precision}.onnx"
TIED_WEIGHT_SLACK = 1.05  # the fp32 fill-mask file may exceed float32 parameter bytes by 5%
_VERSIONED = ("mlm-export", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu",
              "tokenizers", "optimum-onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: dict
    report: VerifyReport


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def export_model(config: ExportConfig) -> ExportResult:
    """Export, fuse and verify MODEL; the artifact appears only if every graph passes its gate.

    Every check that can fail fast (destination, source, disk space, a writable parent) runs before
    the model is loaded; an interruption or failure at any stage leaves nothing behind.
    """
    require_export_extra()
    spec = parse_source(config.model, config.revision)
    out = Path(config.out) if config.out else Path("models") / spec.default_name
    local = [Path(spec.location)] if spec.kind == "local" else []
    prepare_destination(out, config.force, local)
    with atomic_directory(out, config.force, local) as tmp:
        source = resolve_spec(spec)  # a hub download happens only once the destination is known good
        check_destination(out, config.force, [source.model_dir])
        estimate_free_space(tmp.parent.parent, disk_needed(source, config))
        log.info("loading %s from %s", source.spec.location, source.model_dir)
        model = load_model(source, attn_implementation="eager")
        tokenizer = load_tokenizer(source)
        manifest = _build(model, tokenizer, source, config, tmp)
        del model  # the reference is reloaded fresh by verify
        report = verify_artifact(tmp, source=source)
        for parity in report.graphs:
            manifest["graphs"][parity.graph]["parity"] = parity.to_dict()
        if not report.passed:
            raise ParityError("parity check failed; nothing was written\n" + report.summary(), report)
        write_manifest(tmp, manifest)
    log.info("wrote %s", out)
    return ExportResult(out, manifest, report)


def disk_needed(source: ResolvedSource, config: ExportConfig) -> int:
    """Bytes the build directory holds at its peak, with float32 weights P.

    The logits form stores the tied decoder a second time (up to 1.3 P), the fused fp32 graph and
    its unfused input are on disk together (2 P); fp16 adds 0.5 P; int8 adds its graph and the
    quantizer's full-size intermediate (1.5 P).
    """
    factor = 3.3 + (0.5 if config.fp16 else 0.0) + (1.5 if config.int8 else 0.0)
    return int(source.float32_weight_bytes * factor) + 32 * 1024 * 1024


def _build(model: Any, tokenizer: Any, source: ResolvedSource, config: ExportConfig, tmp: Path) -> dict:
    cfg = model.config
    mask_id = tokenizer.token_to_id("[MASK]")
    _write_model_files(model, tokenizer, source, tmp)
    export_logits(model, tmp / LOGITS_FILE, config.opset, mask_id)

    work = tmp / ".work"
    work.mkdir()
    raw = work / "fill_mask.unfused.onnx"
    export_fill_mask(model, raw, config.opset, mask_id)
    fp32 = tmp / FILL_MASK_FILE.format(precision="fp32")
    fusion = fuse(raw, fp32, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                  num_layers=cfg.num_hidden_layers, allow_unfused=config.allow_unfused)
    shutil.rmtree(work)

    param_bytes = 4 * sum(p.numel() for p in model.parameters())  # tied weights counted once
    stored = initializer_bytes(fp32)
    if stored > TIED_WEIGHT_SLACK * param_bytes:
        raise ExportError(f"{fp32.name} stores {stored / 1e6:.1f} MB of weights for "
                          f"{param_bytes / 1e6:.1f} MB of float32 parameters: a weight (likely the "
                          "tied decoder) is stored twice")
    if fp32.stat().st_size > 2 * 1024**3 - (1 << 20):
        raise ExportError("models over 2 GB need ONNX external data, which mlm-export does not write yet")

    token_ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": source.spec.default_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source.spec.to_dict() | {"weights_sha256": source.weights_sha256,
                                           "weights_files": [p.name for p in source.weight_files]},
        "model": {"architecture": "BertForMaskedLM"} | model_facts(cfg) | {
            "parameters": param_bytes // 4, "float32_parameter_bytes": param_bytes,
        },
        "tokenizer": {
            "file": "tokenizer.json", "char_level": source.char_level,
            "mask_token": "[MASK]", "mask_token_id": mask_id,
            "pad_token_id": token_ids["[PAD]"], "unk_token_id": token_ids["[UNK]"],
            "cls_token_id": token_ids["[CLS]"], "sep_token_id": token_ids["[SEP]"],
            "special_token_ids": sorted(token_ids.values()),
        },
        "versions": library_versions(),
        "opset": config.opset,
    }
    manifest["probe_set"] = choose_probe_set(probe_spec(manifest), tokenizer)

    graphs = {
        "logits": {"file": LOGITS_FILE, "form": "logits", "precision": "fp32", "fusion": None,
                   "tolerance": FP32_TOLERANCE.to_dict(), "parity": None},
    }
    for precision in config.precisions:
        path = tmp / FILL_MASK_FILE.format(precision=precision)
        entry = {"file": path.name, "form": "fill-mask", "precision": precision,
                 "tolerance": TOLERANCES[precision].to_dict(), "parity": None}
        if precision == "fp16":
            to_fp16(fp32, path)
        elif precision == "int8":
            entry |= _int8(model, tokenizer, manifest, config.int8_recipe, fp32, path, entry)
        counts = FusionReport(fused_op_counts(path), cfg.num_hidden_layers, config.allow_unfused)
        weight_bytes = initializer_bytes(path)
        if weight_bytes > stored:
            raise ExportError(f"{path.name} stores more weight bytes ({weight_bytes}) than the fp32 "
                              f"graph ({stored}): a tensor was duplicated during conversion")
        entry["fusion"] = (fusion if precision == "fp32" else counts).to_dict()
        entry["weight_bytes"] = weight_bytes
        graphs[precision] = entry

    manifest["graphs"] = graphs
    manifest["files"] = file_entries(tmp)
    write_manifest(tmp, manifest)
    return manifest


def _int8(model: Any, tokenizer: Any, manifest: dict, recipe: str, fp32: Path, path: Path,
          entry: dict) -> dict:
    """Quantize with the named recipe, or with the fastest one that passes the int8 gate.

    The gate here uses the model in memory; verify_artifact repeats it on a fresh reload, so a
    recipe picked here is still checked the same way as every other graph.
    """
    if recipe != "auto":
        to_int8(fp32, path, find_int8_recipe(recipe))
        return {"recipe": recipe}
    batches = build_probes(manifest, tokenizer)
    refs = reference_logits(model, batches, manifest["tokenizer"]["mask_token_id"])
    tried = []
    for candidate in INT8_RECIPES:
        to_int8(fp32, path, candidate)
        parity = compare_graph(path, "int8", entry, batches, refs, "cpu")
        gated = parity.gated.to_dict()
        tried.append({"recipe": candidate.name, "passed": parity.passed,
                      "top1_agreement": gated["top1_agreement"], "topk_overlap": gated["topk_overlap"]})
        log.info("int8 recipe %s: top-1 %.2f%%, top-%d overlap %.2f%% -> %s", candidate.name,
                 100 * gated["top1_agreement"], parity.tolerance.top_k, 100 * gated["topk_overlap"],
                 "kept" if parity.passed else "rejected")
        if parity.passed:
            break
    # none passing leaves the most accurate recipe in place; verify then fails the export
    return {"recipe": tried[-1]["recipe"], "recipes_tried": tried}


def initializer_bytes(path: Path) -> int:
    """Bytes of weights in a graph, without the graph structure (which dominates tiny models)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path)).graph
    return sum(int(np.prod(t.dims)) * tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in graph.initializer)


def _write_model_files(model: Any, tokenizer: Any, source: ResolvedSource, tmp: Path) -> None:
    """config.json and tokenizer files, so transformers and optimum can load the directory too."""
    from transformers import PreTrainedTokenizerFast

    config = copy.deepcopy(model.config)
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_max_length=config.max_position_embeddings)
    fast.save_pretrained(tmp)
    tokenizer.save(str(tmp / "tokenizer.json"))
    if source.vocab_file is not None:
        shutil.copyfile(source.vocab_file, tmp / "vocab.txt")
