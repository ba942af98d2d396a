"""Frozen settings objects shared by the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_OPSET = 17
BUILTIN_MODELS = ("antiberty",)


@dataclass(frozen=True)
class ExportConfig:
    """Everything `export` needs besides the model; frozen so a run cannot drift midway."""

    model: str
    out: Path | None = None
    revision: str | None = None
    force: bool = False
    allow_unfused: bool = False
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"opset {self.opset} is too old: LayerNormalization needs opset >= 17")


@dataclass(frozen=True)
class Tolerance:
    """A variant's parity gate, written into the manifest so `verify` enforces the same numbers."""

    max_abs_logit: float | None = None
    min_top1_agreement: float = 1.0
    min_topk_overlap: float = 1.0
    top_k: int = 5

    def to_dict(self) -> dict:
        return {
            "max_abs_logit": self.max_abs_logit,
            "min_top1_agreement": self.min_top1_agreement,
            "min_topk_overlap": self.min_topk_overlap,
            "top_k": self.top_k,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Tolerance":
        return cls(**data)


# fp32 must match PyTorch to float rounding; top-k sets must match except where PyTorch itself
# ranks two tokens within max_abs_logit of each other (a tie at fp32 precision is no disagreement).
FP32_TOLERANCE = Tolerance(max_abs_logit=1e-4, min_top1_agreement=1.0, min_topk_overlap=1.0)
