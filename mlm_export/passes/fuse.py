"""Fuse stage: ONNX Runtime's transformer optimizer, with a hard check that attention fused.

Every family is fused with the optimizer's `bert` fusions (as optimum does: its MODEL_TYPES has no
roberta, distilbert, electra, albert or esm entry). A family whose spec requires fused attention
fails the export when fewer than one Attention per layer came out; a family ONNX Runtime cannot
fuse (esm: rotary attention) is exported unfused, and its manifest says `attention: none`.

Before fusing, each residual Add is rewritten to take the attention branch as its first input.
ONNX Runtime's attention matcher follows the first input whose producer is an Add, without
backtracking. ALBERT's first layer adds its attention output to the embedding projection, itself
a MatMul + Add, listed first: the matcher walked into the projection and left that layer unfused
(11 of 12 layers on rxnmapper's ALBERT). The sum is the same in either order.

After fusing, identical initializers are stored once: the optimizer builds one QKV weight per fused
Attention, so ALBERT's twelve layers, which share one set of weights, would store it twelve times.
"""

from __future__ import annotations

from collections import Counter

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._quiet import quiet_onnxruntime_tools
from ..errors import ExportError, FusionError
from ..families import ATTENTION_REQUIRED
from ..progress import stage
from .graph_file import load_graph, save_graph, uses_external_data

log = logging.getLogger("mlm_export")

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")  # QAttention: int8 variant
_ATTENTION_BRANCH = ["Add", "MatMul", "Reshape", "Transpose", "MatMul"]  # dense <- context <- probs @ V


@dataclass(frozen=True)
class FusionReport:
    counts: dict[str, int]
    expected_attention: int  # fused Attention nodes required: one per layer, or 0 for `attention: none`
    allow_unfused: bool
    mode: str = ATTENTION_REQUIRED

    @property
    def attention(self) -> int:
        return sum(self.counts.get(op, 0) for op in ATTENTION_OPS)

    @property
    def complete(self) -> bool:
        return self.mode != ATTENTION_REQUIRED or self.attention == self.expected_attention

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "attention": self.attention, "mode": self.mode,
                "expected_attention": self.expected_attention, "complete": self.complete,
                "allow_unfused": self.allow_unfused}


def attention_branch_first(model: Any) -> int:
    """Put the attention output first in every residual Add before a LayerNormalization; returns
    how many Adds were swapped."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_attention_branch(name: str) -> bool:
        for op in _ATTENTION_BRANCH:
            node = producer.get(name)
            if node is None or node.op_type != op:
                return False
            if op == "Add":  # the dense layer's bias Add: follow its MatMul input
                name = next((i for i in node.input if i in producer and producer[i].op_type == "MatMul"), "")
            else:
                name = node.input[0]
        return True

    swapped = 0
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        if not any(c.op_type == "LayerNormalization" for c in consumers.get(node.output[0], [])):
            continue
        first, second = node.input
        if not is_attention_branch(first) and is_attention_branch(second):
            node.input[0], node.input[1] = second, first
            swapped += 1
    return swapped


def share_identical_initializers(model: Any) -> int:
    """Keep one copy of each initializer (same type, shape and bytes); returns how many were dropped."""
    import hashlib

    from onnx import numpy_helper

    first: dict[tuple[Any, ...], str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in model.graph.initializer:
        data = init.raw_data or numpy_helper.to_array(init).tobytes()
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).digest())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [i for i in model.graph.input if i.name not in rename]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return len(rename)


def fuse(src: Path, dst: Path, *, num_heads: int, hidden_size: int, num_layers: int,
         mode: str = ATTENTION_REQUIRED, allow_unfused: bool = False) -> FusionReport:
    """Write the fused graph to `dst`; raise FusionError when a required attention fusion fell short."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise ExportError("fusion needs onnxruntime: pip install 'mlm-export[cpu]' "
                          "(or [gpu])") from exc
    with stage(f"fusing {src.name} (ONNX Runtime transformer optimizer)"):
        external = uses_external_data(src)
        model = load_graph(src)
        if attention_branch_first(model):
            save_graph(model, src, external)
        del model
        try:
            with quiet_onnxruntime_tools():
                optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                           hidden_size=hidden_size, opt_level=0)
        except Exception as exc:
            raise ExportError(f"the ONNX Runtime transformer optimizer failed on {src.name}: {exc}") from exc
        stats = optimized.get_fused_operator_statistics()
        expected = num_layers if mode == ATTENTION_REQUIRED else 0
        report = FusionReport({op: int(n) for op, n in stats.items() if n}, expected, allow_unfused, mode)
        if not report.complete and not allow_unfused:
            raise FusionError(
                f"attention fused in {report.attention} of {num_layers} layers ({report.counts}); the "
                "graph would run unfused and slower. This usually means the exporter or the modeling "
                "code changed. Pass --allow-unfused to export anyway (the manifest will say so).")
        share_identical_initializers(optimized.model)
        with quiet_onnxruntime_tools():
            optimized.topological_sort()
        declare_contrib_opset(optimized.model)
        save_graph(optimized.model, dst, external)
        return report


def declare_contrib_opset(model: Any) -> None:
    """Fused nodes live in ONNX Runtime's com.microsoft domain, which the graph must import."""
    uses = any(node.domain == "com.microsoft" for node in model.graph.node)
    if uses and not any(o.domain == "com.microsoft" for o in model.opset_import):
        opset = model.opset_import.add()
        opset.domain, opset.version = "com.microsoft", 1


def fused_op_counts(path: Path) -> dict[str, int]:
    """Counts of ONNX Runtime's contrib (fused/quantized) ops, as recorded in the manifest."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node
                               if node.domain == "com.microsoft"
                               or node.op_type in ("LayerNormalization", "Gelu")).items()))
