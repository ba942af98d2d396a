"""The sparse and embed tasks' graphs, built beside fill-mask's from the same model.

Both start from the encoder traced alone (`trace.export_encoder`), fused and converted to each precision
by the ordinary passes: the embed graph is that encoder; the sparse graph joins it with the MLM head
(`trace.export_head`, converted the same way) around a loop over chunks of positions
(`passes.sparse`). The int8 encoder takes the recipe asked for, else the one the fill-mask search kept,
else the fastest that passes this task's own gate. Each graph is judged against PyTorch by
`verify.tasks.TaskHarness` before the artifact is written.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import EMBED_TOLERANCES, SPARSE_TOLERANCES, ExportConfig
from ..errors import ConfigError, ExportError
from ..families import FamilySpec
from ..manifest import TASK_FORMS, FusionRecord, GraphEntry, Manifest, TaskOptions, graph_name
from ..passes.fp16 import to_fp16
from ..passes.fuse import FusionReport, fuse, fused_op_counts
from ..passes.graph_file import (
    data_path,
    declare_inputs,
    initializer_bytes,
    load_graph,
    save_graph,
    uses_external_data,
)
from ..passes.int8 import (
    HEAD_BLOCKWISE,
    HEAD_DYNAMIC,
    HEAD_FLOAT,
    INT8_RECIPES,
    blockwise_head,
    distinct_recipe,
    dynamic_head,
    find_int8_recipe,
    to_int8,
)
from ..passes.portable import check_openvino_reads, write_portable
from ..passes.sparse import CHUNK_TOKENS, assemble_sparse
from ..progress import stage
from ..verify.parity import runtime_of
from ..verify.tasks import TaskHarness, TaskParity
from .trace import export_encoder, export_head, graph_io

log = logging.getLogger("mlm_export")

PARTS = ".tasks"  # the build's folder for the tasks' part graphs, removed once their graphs are written
TASK_PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# the int8 sparse graph's MLM decoder, fastest first: per-channel dynamic int8 ran the head 1.7x faster than
# float on Zen 4 (SPLADE, 32 x 256 tokens; docs/tasks.md); 8-bit block-wise keeps more of the ranking
SPARSE_HEADS = (HEAD_DYNAMIC, HEAD_BLOCKWISE)


@dataclass(frozen=True)
class TaskPlan:
    """Which task graphs an export builds, fixed before the model is traced."""

    tasks: tuple[str, ...]        # of TASK_FORMS, in the order asked
    pooling: str                  # sparse
    layer: int                    # embed: 0 the embeddings .. num_layers the last
    num_layers: int

    @classmethod
    def of(cls, config: ExportConfig, num_layers: int) -> TaskPlan:
        layer = num_layers if config.layer is None else config.layer
        if not -num_layers - 1 <= layer <= num_layers:
            raise ConfigError(f"layer {config.layer} is not one of this model's: 0 (the embeddings) to {num_layers} "
                              f"(the last), or -1 to -{num_layers + 1} counted from the end")
        return cls(tuple(t for t in config.tasks if t in TASK_FORMS), config.sparse_pooling,
                   layer % (num_layers + 1), num_layers)

    def encoder_file(self, task: str) -> str:
        """The raw encoder part a task starts from: the last layer's is shared by sparse and embed."""
        return "encoder.raw.onnx" if task == "sparse" or self.layer == self.num_layers else "embed.raw.onnx"


def trace_parts(model: Any, family: FamilySpec, plan: TaskPlan, tmp: Path, opset: int, mask_id: int,
                external: bool) -> None:
    """The raw part graphs every task of `plan` needs, into the build's PARTS folder."""
    if not plan.tasks:
        return
    parts = tmp / PARTS
    parts.mkdir()
    for name in dict.fromkeys(plan.encoder_file(task) for task in plan.tasks):
        layer = None if name == "encoder.raw.onnx" else plan.layer
        export_encoder(model, family, parts / name, opset, mask_id, layer, external)
    if "sparse" in plan.tasks:
        export_head(model, family, parts / "head.onnx", opset)


def build_tasks(manifest: Manifest, plan: TaskPlan, family: FamilySpec, config: ExportConfig, cfg: Any,
                harness: TaskHarness, calibration: Sequence[Any], tmp: Path,
                fill_mask_recipe: str | None) -> tuple[Manifest, dict[str, TaskParity]]:
    """Every graph of `plan`, each judged; returns the manifest with them and their parity."""
    judged: dict[str, TaskParity] = {}
    parts = tmp / PARTS
    fused: dict[str, tuple[Path, FusionReport]] = {}
    precisions = [p for p in config.precisions if p in TASK_PRECISIONS]
    for task in plan.tasks:
        raw = plan.encoder_file(task)
        if raw not in fused:
            layers = plan.num_layers if raw == "encoder.raw.onnx" else plan.layer
            path = parts / raw.replace(".raw.", ".fp32.")
            report = fuse(parts / raw, path, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                          num_layers=layers, mode=family.attention, allow_unfused=config.allow_unfused)
            fused[raw] = path, report
        encoder, fusion = fused[raw]
        for precision in precisions:
            if precision == "int8":
                entry, parity = _int8(task, plan, family, config, cfg, harness, calibration, tmp, encoder, fusion,
                                      fill_mask_recipe)
            elif precision == "bf16":  # OpenVINO's: the unfused encoder in standard ops, the whole graph in bf16
                part = parts / raw.replace(".raw.", ".bf16.")
                if not part.exists():
                    write_portable(parts / raw, part, head=False)
                entry = _write(task, precision, plan, family, cfg, tmp, part, fusion)
                shapes = [b for b in harness.batches if b.probe_set == "shapes"][:3]
                with stage(f"checking that OpenVINO reads {entry.file} as ONNX Runtime does (float32)"):
                    check_openvino_reads(tmp / entry.file, None, entry.input_names, shapes)
                parity = harness.check(tmp / entry.file, entry_name(entry), entry, runtime_of(entry))
            else:
                part = encoder if precision == "fp32" else parts / f"{encoder.stem}.{precision}.onnx"
                if precision == "fp16" and not part.exists():
                    to_fp16(encoder, part)
                entry = _write(task, precision, plan, family, cfg, tmp, part, fusion)
                parity = harness.check(tmp / entry.file, entry_name(entry), entry, "cpu")
            judged[entry_name(entry)] = parity
            manifest = manifest.with_graph_added(entry_name(entry), entry)
    shutil.rmtree(parts, ignore_errors=True)
    return manifest, judged


def entry_name(entry: GraphEntry) -> str:
    return graph_name(entry.form, entry.precision)


def _write(task: str, precision: str, plan: TaskPlan, family: FamilySpec, cfg: Any, tmp: Path, encoder: Path,
           fusion: FusionReport, recipe: str | None = None, head_kind: str | None = None) -> GraphEntry:
    """The task's graph for `precision` from its converted encoder part (and, for sparse, the head made
    `head_kind` for int8), with its manifest entry."""
    out = tmp / f"{task}.{precision}.onnx"
    if task == "sparse":
        head = _head(tmp / PARTS / "head.onnx", "fp16" if precision == "fp16" else head_kind or HEAD_FLOAT,
                     cfg.vocab_size)
        assemble_sparse(encoder, head, out, pooling=plan.pooling, chunk_tokens=CHUNK_TOKENS)
        options = TaskOptions(pooling=plan.pooling, chunk_tokens=CHUNK_TOKENS)
        tolerance = SPARSE_TOLERANCES[precision]
    else:
        graph_model = load_graph(encoder)
        declare_inputs(graph_model, family.input_names)
        save_graph(graph_model, out, uses_external_data(encoder))
        options = TaskOptions(layer=plan.layer)
        tolerance = EMBED_TOLERANCES[precision]
    counts = fusion.counts if precision == "fp32" else fused_op_counts(out)
    record = None if precision == "bf16" else FusionRecord.from_dict(  # bf16 is unfused: OpenVINO fuses it
        FusionReport(counts, fusion.expected_attention, fusion.allow_unfused, fusion.mode).to_dict())
    return GraphEntry(out.name, task, precision, family.name, *graph_io(family, task, cfg.vocab_size, cfg.hidden_size),
                      tolerance, fusion=record, weight_bytes=initializer_bytes(out), recipe=recipe,
                      data_file=data_path(out).name if data_path(out).is_file() else None,
                      head=head_kind if task == "sparse" else None, task=options)


def _head(raw: Path, kind: str, vocab_size: int) -> Path:
    """The sparse head part in `kind`: "fp16", or an int8 variant's decoder (HEAD_*); made once. bf16 takes the
    float head: the unfused graph is computed in bf16 by OpenVINO as a whole."""
    if kind == HEAD_FLOAT:
        return raw
    path = raw.with_name(f"head.{kind}.onnx")
    if not path.exists():
        if kind == "fp16":
            to_fp16(raw, path)
        elif kind == HEAD_DYNAMIC:
            dynamic_head(raw, path)
        else:
            blockwise_head(raw, path, vocab_size)
    return path


def _int8(task: str, plan: TaskPlan, family: FamilySpec, config: ExportConfig, cfg: Any, harness: TaskHarness,
          calibration: Sequence[Any], tmp: Path, encoder: Path, fusion: FusionReport,
          fill_mask_recipe: str | None) -> tuple[GraphEntry, TaskParity]:
    """The int8 graph: the recipe asked for, else fill-mask's, else the first of INT8_RECIPES (fastest first)
    that passes this task's gate; none passing keeps the last tried, and the export fails on its gate.
    The sparse graph's head starts float; with a passing encoder, its decoder is tried in int8 (SPARSE_HEADS,
    fastest first), and the first that passes the same gate is kept."""
    if config.int8_recipe != "auto":  # exactly the recipe asked for
        recipes = [find_int8_recipe(config.int8_recipe)]
    else:  # fill-mask's first, when it kept one, then the others fastest first
        recipes = [r for r in INT8_RECIPES if distinct_recipe(encoder, r)]
        recipes.sort(key=lambda r: r.name != fill_mask_recipe)
    part = encoder.with_name(f"{encoder.stem}.int8.onnx")
    result: tuple[GraphEntry, TaskParity] | None = None
    for recipe in recipes:
        to_int8(encoder, part, recipe, calibration)
        entry = _write(task, "int8", plan, family, cfg, tmp, part, fusion, recipe=recipe.name, head_kind=HEAD_FLOAT)
        parity = harness.check(tmp / entry.file, entry_name(entry), entry, "cpu")
        log.info("%s int8 recipe %s: min cosine %.5f -> %s", task, recipe.name, parity.gated.min_cosine,
                 "passed" if parity.passed else "rejected")
        result = entry, parity
        if parity.passed:
            break
    if result is None:
        raise ExportError("no int8 recipe applies to this graph")
    if task == "sparse" and result[1].passed:
        for kind in SPARSE_HEADS:
            entry = _write(task, "int8", plan, family, cfg, tmp, part, fusion, recipe=result[0].recipe, head_kind=kind)
            parity = harness.check(tmp / entry.file, entry_name(entry), entry, "cpu")
            log.info("sparse int8, %s MLM head: min cosine %.5f, top-%d overlap %.2f%% -> %s", kind,
                     parity.gated.min_cosine, parity.tolerance.top_k,
                     100 * parity.gated.overlap / max(parity.gated.texts, 1), "kept" if parity.passed else "rejected")
            if parity.passed:
                result = entry, parity
                break
        else:  # none passed: the float head, which did
            result = _write(task, "int8", plan, family, cfg, tmp, part, fusion, recipe=result[0].recipe,
                            head_kind=HEAD_FLOAT), result[1]
    part.unlink(missing_ok=True)
    data_path(part).unlink(missing_ok=True)
    return result
