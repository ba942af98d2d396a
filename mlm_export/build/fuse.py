"""Fuse stage: ONNX Runtime's transformer optimizer, with a hard check that attention fused."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .._quiet import quiet_onnxruntime_tools
from ..errors import ExportError, FusionError

log = logging.getLogger("mlm_export")

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")  # QAttention: int8 variant


@dataclass(frozen=True)
class FusionReport:
    counts: dict[str, int]
    expected_attention: int
    allow_unfused: bool

    @property
    def attention(self) -> int:
        return sum(self.counts.get(op, 0) for op in ATTENTION_OPS)

    @property
    def complete(self) -> bool:
        return self.attention == self.expected_attention

    def to_dict(self) -> dict:
        return {"counts": self.counts, "attention": self.attention,
                "expected_attention": self.expected_attention, "complete": self.complete,
                "allow_unfused": self.allow_unfused}


def fuse(src: Path, dst: Path, *, num_heads: int, hidden_size: int, num_layers: int,
         allow_unfused: bool = False) -> FusionReport:
    """Write the fused graph to `dst`; raise FusionError when attention did not fuse per layer."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise ExportError("fusion needs onnxruntime: pip install 'mlm-export[cpu]' "
                          "(or [gpu])") from exc
    log.info("fusing %s (ONNX Runtime transformer optimizer)", src.name)
    try:
        with quiet_onnxruntime_tools():
            optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                       hidden_size=hidden_size, opt_level=0)
    except Exception as exc:
        raise ExportError(f"the ONNX Runtime transformer optimizer failed on {src.name}: {exc}") from exc
    stats = optimized.get_fused_operator_statistics()
    report = FusionReport({op: int(n) for op, n in stats.items() if n}, num_layers, allow_unfused)
    if not report.complete and not allow_unfused:
        raise FusionError(
            f"attention fused in {report.attention} of {num_layers} layers ({report.counts}); the "
            "graph would run unfused and slower. This usually means the exporter or the modeling "
            "code changed. Pass --allow-unfused to export anyway (the manifest will say so).")
    with quiet_onnxruntime_tools():
        optimized.save_model_to_file(str(dst))
    return report
