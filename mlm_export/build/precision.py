"""Precision stage: fp16 (for CUDA) and int8 (for CPU) variants derived from the fused fp32 graph.

fp16 keeps the softmax/top-k tail and LayerNorm in float32; everything else runs in half.

int8 comes in recipes, fastest first; export tries them in order and keeps the first that passes
the int8 gate on the artifact's realistic probes (the README's precision section has the measurements):
- `dynamic`: every encoder MatMul and the fused Attention quantized dynamically, weights per
  channel. One scale per activation tensor, so BERT's outlier channels cost accuracy: it passes
  on bert-base-sized weights and fails top-1 on AntiBERTy (99.21%).
- `dynamic-ffn2-blockwise-top2`: `dynamic`, except the second FFN MatMul of the two layers whose
  input (GELU's output) has the heaviest-tailed channel ranges on the realistic probe rows
  (calibration.py), which is block-wise as below. It costs about a quarter of the next recipe's extra.
- `dynamic-ffn2-blockwise`: `dynamic`, except the second FFN MatMul of every layer (whose input is
  GELU's heavy-tailed output) uses 8-bit block-wise weights with activations quantized per block
  of 32 (MatMulNBits, accuracy_level 4). About 1.35x slower than `dynamic` on bert-base.
- `blockwise`: Attention dynamic per tensor, every other MatMul block-wise. The slowest and the
  most accurate on logits; the previous default.
The MLM head (two Gemm nodes) and the embedding Gather stay float in every recipe: int8 there is
where fill-mask accuracy dies. Every int8 graph also has its SkipLayerNormalization nodes split
into Add + LayerNormalization, which ONNX Runtime's CPU provider runs faster.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._quiet import quiet_onnxruntime_tools
from ..errors import ConfigError, ExportError
from ..progress import stage
from .calibration import heaviest_tails
from .fuse import declare_contrib_opset, share_identical_initializers
from .graph_file import data_path, load_graph, save_graph, uses_external_data

log = logging.getLogger("mlm_export")

# The softmax tail of the fill-mask form and LayerNorm statistics overflow or lose rank order in half.
FP16_KEEP_FLOAT = ["TopK", "ReduceLogSumExp", "Sub", "Exp", "LayerNormalization", "Min", "NonZero"]
INT8_BLOCK_SIZE = 32  # blocks of 64 and 128 were faster but fell below 99.5% top-1
GELU_OPS = ("BiasGelu", "Gelu", "FastGelu")
MATMUL_ROLES = ("attention_output", "ffn1", "ffn2", "other")


@dataclass(frozen=True)
class Int8Recipe:
    """Which encoder MatMuls are block-wise; the rest, and the fused Attention, are dynamic int8."""

    name: str
    blockwise: tuple[str, ...]  # roles from MATMUL_ROLES
    attention_per_channel: bool
    # 0: every MatMul of those roles; N: only the N whose input has the heaviest tail (calibration rows)
    blockwise_layers: int = 0


INT8_RECIPES = (
    Int8Recipe("dynamic", blockwise=(), attention_per_channel=True),
    Int8Recipe("dynamic-ffn2-blockwise-top2", blockwise=("ffn2",), attention_per_channel=True, blockwise_layers=2),
    Int8Recipe("dynamic-ffn2-blockwise", blockwise=("ffn2",), attention_per_channel=True),
    Int8Recipe("blockwise", blockwise=MATMUL_ROLES, attention_per_channel=False),
)
INT8_RECIPE_NAMES = tuple(r.name for r in INT8_RECIPES)


def find_int8_recipe(name: str) -> Int8Recipe:
    for recipe in INT8_RECIPES:
        if recipe.name == name:
            return recipe
    raise ConfigError(f"unknown int8 recipe {name!r}; choose one of {', '.join(INT8_RECIPE_NAMES)}")


def fused_op_counts(path: Path) -> dict[str, int]:
    """Counts of ONNX Runtime's contrib (fused/quantized) ops, as recorded in the manifest."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node
                               if node.domain == "com.microsoft"
                               or node.op_type in ("LayerNormalization", "Gelu")).items()))


def to_fp16(src: Path, dst: Path) -> None:
    """Half-precision weights and compute, float32 inputs/outputs (keep_io_types)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    with stage(f"converting {src.name} to fp16"):
        try:
            model = OnnxModel(load_graph(src))
            with quiet_onnxruntime_tools():
                model.convert_float_to_float16(keep_io_types=True,
                                               op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FLOAT)
            share_identical_initializers(model.model)
            declare_contrib_opset(model.model)
            save_graph(model.model, dst, uses_external_data(src))
        except Exception as exc:
            raise ExportError(f"fp16 conversion of {src.name} failed: {exc}") from exc


def distinct_recipe(path: Path, recipe: Int8Recipe) -> bool:
    """False where `recipe` would quantize this graph exactly as another recipe in INT8_RECIPES does: a
    dynamic-based recipe with no MatMul of its block-wise roles (it is `dynamic`), or no more of them than
    it picks (it is the whole-role recipe)."""
    if not recipe.blockwise or not recipe.attention_per_channel:
        return True  # dynamic itself, or blockwise (whose attention differs from dynamic's)
    import onnx

    roles = matmul_roles(onnx.load(str(path), load_external_data=False)).values()  # structure only
    count = sum(role in recipe.blockwise for role in roles)
    return recipe.blockwise_layers < count if recipe.blockwise_layers else count > 0


def to_int8(src: Path, dst: Path, recipe: Int8Recipe, calibration: Sequence[Any] = ()) -> None:
    """int8 for the CPU provider; never select it for CUDA (its int8 ops fall back to the CPU).

    `calibration`: single-row ProbeBatch objects, for a recipe that picks its block-wise layers by their
    activations (`blockwise_layers`).
    """
    with stage(f"quantizing {src.name} to int8, recipe {recipe.name} (MLM head stays float)"):
        staged = dst.with_name(dst.stem + ".staged.onnx")
        external = uses_external_data(src)
        try:
            model = load_graph(src)
            roles = matmul_roles(model)
            candidates = [n for n in model.graph.node if n.op_type == "MatMul" and roles[n.name] in recipe.blockwise]
            blockwise = ([n.name for n in candidates] if not recipe.blockwise_layers else
                         heaviest_tails(model, candidates, calibration, dst.parent, external, recipe.blockwise_layers))
            if recipe.blockwise_layers and len(candidates) <= recipe.blockwise_layers:
                log.warning("int8 recipe %s: this graph has %d such MatMul(s), so every one is block-wise",
                            recipe.name, len(candidates))
            elif recipe.blockwise_layers:
                log.info("int8 recipe %s: block-wise %s", recipe.name, ", ".join(blockwise))
            head = _hide_head(model)
            with quiet_onnxruntime_tools():
                _quantize(model, staged, recipe, external, blockwise)
            model = load_graph(staged)
            _restore_head(model, head)
            unfuse_skip_layer_norm(model)
            share_identical_initializers(model)  # layers that share weights (ALBERT) quantize to equal copies
            save_graph(model, dst, external)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantization of {src.name} failed: {exc}") from exc
        finally:
            staged.unlink(missing_ok=True)
            data_path(staged).unlink(missing_ok=True)


def unfuse_skip_layer_norm(model: Any) -> int:
    """Split each SkipLayerNormalization into Add (+ bias Add) and a standard LayerNormalization.

    On this repository's CPU, ONNX Runtime's SkipLayerNormalization kernel took 6.1 ms per
    bert-base forward at 1x128 (24 calls) and Add + LayerNormalization 1.9 ms: the int8 graph got
    10% faster at 1x128 and 32x128. Same arithmetic, so the int8 gate figures barely move. Only
    nodes whose mean/inv-std/sum outputs are unused are split. Returns how many were. A test checks
    that the session's optimized graph still has them split.
    """
    from onnx import helper

    nodes, split = [], 0
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or any(node.output[1:]):
            nodes.append(node)
            continue
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        # input + skip first, then the bias: in the other order ONNX Runtime's optimizer matches
        # its SkipLayerNormalization pattern and fuses the node back at session start
        total = f"{node.name}/skip_sum"
        nodes.append(helper.make_node("Add", list(node.input[:2]), [total], name=f"{node.name}/add"))
        if len(node.input) > 4 and node.input[4]:
            nodes.append(helper.make_node("Add", [total, node.input[4]], [total + "_bias"],
                                          name=f"{node.name}/add_bias"))
            total += "_bias"
        nodes.append(helper.make_node("LayerNormalization", [total, node.input[2], node.input[3]],
                                      [node.output[0]], name=f"{node.name}/layer_norm", axis=-1,
                                      epsilon=epsilon))
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


def matmul_roles(model: Any) -> dict[str, str]:
    """Role of each encoder MatMul in a fused BERT graph, told apart by its neighbours."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    roles = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        before = producer.get(node.input[0])
        if before is not None and before.op_type == "Attention":
            roles[node.name] = "attention_output"
        elif before is not None and before.op_type in GELU_OPS:
            roles[node.name] = "ffn2"
        elif any(after.op_type in GELU_OPS for after in consumers.get(node.output[0], [])):
            roles[node.name] = "ffn1"
        else:
            roles[node.name] = "other"
    return roles


def _quantize(model: Any, path: Path, recipe: Int8Recipe, external: bool, blockwise: list[str]) -> None:
    """Every encoder MatMul and Attention dynamic, except the MatMuls named in `blockwise`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    roles = matmul_roles(model)
    save_graph(model, path, external)
    # quantize_dynamic takes one per_channel flag, so per-tensor Attention needs its own pass
    if recipe.attention_per_channel:
        passes = [(["Attention", "MatMul"], True)]
    else:
        passes = [(["Attention"], False)] + ([(["MatMul"], True)] if len(blockwise) < len(roles) else [])
    for op_types, per_channel in passes:
        # into a second file: with external data, writing in place would append to the data being read
        out = path.with_name(path.stem + ".pass.onnx")
        quantize_dynamic(
            str(path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
            op_types_to_quantize=op_types, nodes_to_exclude=blockwise, use_external_data_format=external,
            # fused graphs carry com.microsoft ops without type info; float is their weight type
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        save_graph(load_graph(out), path, external)
        out.unlink()
        data_path(out).unlink(missing_ok=True)
    if not blockwise:
        return
    quantizer = MatMulNBitsQuantizer(
        load_graph(path), bits=8, block_size=INT8_BLOCK_SIZE, is_symmetric=True,
        accuracy_level=4, op_types_to_quantize=("MatMul",))
    quantizer.process()
    declare_contrib_opset(quantizer.model.model)
    save_graph(quantizer.model.model, path, external)


_HIDDEN_DOMAIN, _HIDDEN_OP = "mlm_export.float_head", "FloatGemm"


def _hide_head(model: Any) -> list[str]:
    """Disguise the MLM head's Gemm nodes from the quantizer.

    quantize_dynamic rewrites every Gemm as a MatMul with a transposed copy of its weight, even
    one it does not quantize; for the decoder that copy duplicates the tied embedding matrix
    (bert-base: +94 MB), and the MatMul would then be quantized by the block-wise pass.
    """
    from onnx import helper

    names = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            node.op_type, node.domain = _HIDDEN_OP, _HIDDEN_DOMAIN
            names.append(node.name)
    model.opset_import.append(helper.make_opsetid(_HIDDEN_DOMAIN, 1))
    return names


def _restore_head(model: Any, names: list[str]) -> None:
    restored = 0
    for node in model.graph.node:
        if node.domain == _HIDDEN_DOMAIN and node.op_type == _HIDDEN_OP and node.name in names:
            node.op_type, node.domain = "Gemm", ""
            restored += 1
    if restored != len(names):
        raise ExportError(f"the quantizer changed the MLM head: {len(names)} Gemm nodes hidden, "
                          f"{restored} found afterwards")
    imports = [o for o in model.opset_import if o.domain != _HIDDEN_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
