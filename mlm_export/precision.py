"""Precision stage: fp16 (for CUDA) and int8 (for CPU) variants derived from the fused fp32 graph.

The choices were measured on AntiBERTy's trained head against the gates (top-1 >= 99.5%, top-5
overlap >= 99% on real antibody sequences); the README's precision section has the numbers.
- fp16 keeps the softmax/top-k tail and LayerNorm in float32; everything else runs in half.
- int8 quantizes the fused Attention's QKV weights dynamically (QAttention, per-tensor) and the
  encoder's other MatMuls as 8-bit block-wise weights (MatMulNBits, blocks of 32) whose
  activations are quantized per block too (accuracy_level 4). Plain dynamic quantization of the
  MatMuls was ~1.6x faster but gives each activation tensor one scale; BERT's outlier channels then
  cost 1.1-1.5 points of top-5 overlap and it fails the gate. The MLM head (two Gemm nodes) and the
  embedding Gather stay float: int8 there is where fill-mask accuracy dies.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ._quiet import quiet_onnxruntime_tools
from .errors import ExportError

log = logging.getLogger("mlm_export")

# The softmax tail of the fill-mask form and LayerNorm statistics overflow or lose rank order in half.
FP16_KEEP_FLOAT = ["TopK", "ReduceLogSumExp", "Sub", "Exp", "LayerNormalization", "Min", "NonZero"]
INT8_BLOCK_SIZE = 32  # blocks of 64 and 128 were faster but fell below 99.5% top-1


def fused_op_counts(path: Path) -> dict[str, int]:
    """Counts of ONNX Runtime's contrib (fused/quantized) ops, as recorded in the manifest."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node
                               if node.domain == "com.microsoft"
                               or node.op_type in ("LayerNormalization", "Gelu")).items()))


def to_fp16(src: Path, dst: Path) -> None:
    """Half-precision weights and compute, float32 inputs/outputs (keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    log.info("converting %s to fp16", src.name)
    try:
        model = OnnxModel(onnx.load(str(src)))
        with quiet_onnxruntime_tools():
            model.convert_float_to_float16(keep_io_types=True,
                                           op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FLOAT)
        model.save_model_to_file(str(dst))
    except Exception as exc:
        raise ExportError(f"fp16 conversion of {src.name} failed: {exc}") from exc


def to_int8(src: Path, dst: Path) -> None:
    """int8 for the CPU provider; never select it for CUDA (its int8 ops fall back to the CPU)."""
    import onnx

    log.info("quantizing %s to int8 (attention dynamic, MatMuls block-wise; MLM head stays float)",
             src.name)
    staged = dst.with_name(dst.stem + ".staged.onnx")
    try:
        model = onnx.load(str(src))
        head = _hide_head(model)
        with quiet_onnxruntime_tools():
            _quantize(model, staged)
        model = onnx.load(str(staged))
        _restore_head(model, head)
        onnx.save(model, str(dst))
    except Exception as exc:
        raise ExportError(f"int8 quantization of {src.name} failed: {exc}") from exc
    finally:
        staged.unlink(missing_ok=True)


def _quantize(model: Any, path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    onnx.save(model, str(path))
    quantize_dynamic(
        str(path), str(path), weight_type=QuantType.QInt8, per_channel=False,
        op_types_to_quantize=["Attention"],
        # fused graphs carry com.microsoft ops without type info; float is their weight type
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(path)), bits=8, block_size=INT8_BLOCK_SIZE, is_symmetric=True,
        accuracy_level=4, op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(path))


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
