"""fp16 pass (for the CUDA provider): half-precision weights and compute, float32 inputs and outputs.

The softmax/top-k tail and LayerNorm statistics stay in float32: in half they overflow or lose rank order.
"""

from __future__ import annotations

from pathlib import Path

from .._quiet import quiet_onnxruntime_tools
from ..errors import ExportError
from ..progress import stage
from .fuse import declare_contrib_opset, share_identical_initializers
from .graph_file import load_graph, save_graph, uses_external_data

# The softmax tail of the fill-mask form and LayerNorm statistics overflow or lose rank order in half.
FP16_KEEP_FLOAT = ["TopK", "ReduceLogSumExp", "Sub", "Exp", "LayerNormalization", "Min", "NonZero"]


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


