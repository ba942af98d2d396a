"""int8 pass (for ONNX Runtime's CPU provider): the fused fp32 graph in, a dynamically quantized one out.

int8 comes in recipes, fastest first; export tries them in order and keeps the first that passes
the int8 gate on the artifact's realistic probes (the README's precision section has the measurements):
- `dynamic`: every encoder MatMul and the fused Attention quantized dynamically, weights per
  channel. One scale per activation tensor, so BERT's outlier channels cost accuracy: it passes
  on bert-base-sized weights and fails top-1 on AntiBERTy (99.21%).
- `dynamic-ffn2-blockwise-top1`, `-top2`: `dynamic`, except the second FFN MatMul of the one (two)
  layer(s) whose input (GELU's output) has the heaviest-tailed channel ranges on the realistic probe
  rows (calibration.py), which is block-wise as below. Each such layer costs about an eighth of the
  next recipe's extra on AntiBERTy's eight layers.
- `dynamic-ffn2-blockwise`: `dynamic`, except the second FFN MatMul of every layer (whose input is
  GELU's heavy-tailed output) uses 8-bit block-wise weights with activations quantized per block
  of 32 (MatMulNBits, accuracy_level 4). About 1.35x slower than `dynamic` on bert-base.
- `blockwise`: Attention dynamic per tensor, every other MatMul block-wise. The slowest and the
  most accurate on logits; the previous default.
The MLM head (two Gemm nodes) and the embedding Gather stay float in every recipe: dynamic int8
there, one activation scale per tensor, is where fill-mask accuracy dies. Once a recipe is chosen,
a vocabulary-wide decoder is tried 8-bit block-wise (`blockwise_head`) and kept only if the gate
still passes: at one mask its float weights are most of the bytes a call reads. Every int8 graph also
has its SkipLayerNormalization nodes split into Add + LayerNormalization, and its BiasGelu nodes into
Add + Gelu, both of which ONNX Runtime's CPU provider runs faster (the numbers are in each function).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._quiet import quiet_onnxruntime_tools
from ..errors import ConfigError, ExportError
from ..progress import stage
from .calibration import heaviest_tails
from .fuse import declare_contrib_opset, share_identical_initializers
from .head_rows import GATHER_NODES
from .graph_file import data_path, load_graph, save_graph, uses_external_data

log = logging.getLogger("mlm_export")

INT8_BLOCK_SIZE = 32  # blocks of 64 and 128 were faster but fell below 99.5% top-1
GELU_OPS = ("BiasGelu", "Gelu", "FastGelu")
# A decoder below this many weights reads fast enough in float that one more gate run is not worth it
# (bert-base: 23.4M, 3.7 ms of a 30 ms call at 1x128 on this repository's CPU).
HEAD_BLOCKWISE_MIN_WEIGHTS = 1 << 20
HEAD_FLOAT, HEAD_BLOCKWISE, HEAD_DYNAMIC = "float", "int8-blockwise", "int8-dynamic"
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
    Int8Recipe("dynamic-ffn2-blockwise-top1", blockwise=("ffn2",), attention_per_channel=True, blockwise_layers=1),
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
    with stage(f"quantizing {src.name} to int8, recipe {recipe.name} (MLM head float)"):
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
            split_bias_gelu(model)
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


def split_bias_gelu(model: Any) -> int:
    """Split each BiasGelu(x, bias) into Add(x, bias) and Gelu. Returns how many were.

    At session start ONNX Runtime folds that Add into the DynamicQuantizeMatMul before it, as the
    bias it takes, and its Gelu kernel is about twice as fast as BiasGelu's. The outputs stay the
    same to the bit (the same float additions in the same order). On this repository's CPU the int8
    graph got 1.04x / 1.11x faster on bert-base at 1x128 / 32x128 and 1.03x / 1.09x on AntiBERTy. Where
    nothing takes the bias (a block-wise FFN1), ONNX Runtime fuses the pair back into BiasGelu. A
    test checks that the session's optimized graph keeps Gelu alone after a dynamic int8 MatMul.
    """
    from onnx import helper

    nodes, split = [], 0
    for node in model.graph.node:
        if node.op_type != "BiasGelu" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        stem = node.output[0]  # unique in a valid graph, where node names need not be
        biased = f"{stem}/biased"
        nodes.append(helper.make_node("Add", list(node.input[:2]), [biased], name=f"{stem}/add_bias"))
        nodes.append(helper.make_node("Gelu", [biased], list(node.output), name=f"{stem}/gelu",
                                      domain="com.microsoft"))
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
        while before is not None and before.name.endswith(GATHER_NODES):  # the last layer's, at the head's rows
            before = producer.get(before.input[0])
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


def decoder_weights(path: Path, vocab_size: int) -> int:
    """Weights of the MLM decoder (the Gemm whose output is vocabulary-wide); 0 without one."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph  # the sizes are in the dims
    found = _decoder(graph, vocab_size)
    return 0 if found is None else int(np.prod(found[1].dims))


def dynamic_head(src: Path, dst: Path) -> None:
    """Write the MLM head graph `src` (the sparse task's, rows in, logits out) to `dst` with its Linears as
    per-channel dynamic int8 (activations per tensor): the VNNI path, 1.7x faster than the float decoder
    on a SPLADE head of 30522 terms, where a fill-mask head would lose its top-1 ranking. The sparse gate
    (cosine and top-20 terms) decides whether it stays."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with stage(f"dynamic int8 MLM head -> {dst.name}"):
        try:
            with quiet_onnxruntime_tools():
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["Gemm", "MatMul"])
        except Exception as exc:
            raise ExportError(f"dynamic int8 MLM head for {src.name} failed: {exc}") from exc


def blockwise_head(src: Path, dst: Path, vocab_size: int) -> None:
    """Write `src` to `dst` with the MLM decoder as an 8-bit block-wise MatMulNBits.

    Weights get one scale per block of 32 and, at accuracy level 4, so do the activations: unlike
    per-tensor dynamic int8, that keeps the vocabulary's ranking (the gate decides whether it
    does). A tied embedding keeps its float table for the input Gather.
    """
    from onnx import helper, numpy_helper

    with stage(f"8-bit block-wise MLM decoder -> {dst.name}"):
        try:
            model = load_graph(src)
            found = _decoder(model.graph, vocab_size)
            if found is None:
                raise ExportError(f"{src.name} has no vocabulary-wide Gemm to quantize")
            node, weight, bias = found
            matrix = numpy_helper.to_array(weight)  # [vocab, hidden] under transB, else [hidden, vocab]
            packed = _nbits_matmul(np.ascontiguousarray(matrix.T if _attribute(node, "transB", 0) else matrix))
            inputs = [node.input[0]]
            for name, tensor in zip(("weight", "scales"), packed[1:]):
                tensor.name = f"{node.name}/{name}_q8"
                model.graph.initializer.append(tensor)
                inputs.append(tensor.name)
            replacement = helper.make_node(
                "MatMulNBits", inputs + ["", "", bias], list(node.output), name=f"{node.name}/nbits",
                domain="com.microsoft", **packed[0])
            nodes = [replacement if n is node else n for n in model.graph.node]
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            if not any(weight.name in n.input for n in nodes):  # untied: the float matrix has no reader left
                model.graph.initializer.remove(weight)
            declare_contrib_opset(model)
            save_graph(model, dst, uses_external_data(src))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"8-bit block-wise decoder for {src.name} failed: {exc}") from exc


def _decoder(graph: Any, vocab_size: int) -> tuple[Any, Any, str] | None:
    """The MLM decoder, the graph's last projection, if it is a plain Gemm (alpha = beta = 1, no
    transA) with a float [vocab, hidden] (transB) or [hidden, vocab] weight and no bias or a [vocab]
    one (what MatMulNBits takes); with that weight and the bias's name ("" for none). None otherwise,
    an already block-wise decoder included (the head's transform before it can be just as wide where
    the vocabulary is as small as the hidden size)."""
    from onnx import TensorProto

    weights = {t.name: t for t in graph.initializer}
    node = next((n for n in reversed(graph.node) if n.op_type in ("Gemm", "MatMul", "MatMulNBits")), None)
    weight = weights.get(node.input[1]) if node is not None and node.op_type == "Gemm" else None
    if (node is None or weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2
            or _attribute(node, "alpha", 1.0) != 1.0 or _attribute(node, "beta", 1.0) != 1.0
            or _attribute(node, "transA", 0)):
        return None
    rows = weight.dims[0] if _attribute(node, "transB", 0) else weight.dims[1]
    bias = node.input[2] if len(node.input) > 2 else ""
    if rows != vocab_size or (bias and list(getattr(weights.get(bias), "dims", ())) != [vocab_size]):
        return None
    return node, weight, bias


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _nbits_matmul(matrix: Any) -> tuple[dict[str, Any], Any, Any]:
    """MatMulNBits attributes, packed weight and scales for a float [K, N] matrix, made by ONNX
    Runtime's own quantizer on a one-node graph (its layout is the kernel's business)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    k, n = matrix.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="decoder")], "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(matrix, "w")])
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph), bits=8, block_size=INT8_BLOCK_SIZE,
                                     is_symmetric=True, accuracy_level=4, op_types_to_quantize=("MatMul",))
    with quiet_onnxruntime_tools():
        quantizer.process()
    (node,) = quantizer.model.model.graph.node
    if node.op_type != "MatMulNBits" or len(node.input) != 3:
        raise ExportError(f"ONNX Runtime's quantizer made {node.op_type} with inputs {list(node.input)}")
    tensors = {t.name: t for t in quantizer.model.model.graph.initializer}
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attributes, tensors[node.input[1]], tensors[node.input[2]]
