"""Frozen settings objects shared by the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .manifest import TASKS, Tolerance, VectorTolerance

DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization
MAX_OPSET = 23  # the newest torch.onnx (TorchScript exporter, torch 2.13) writes
BUILTIN_MODELS = ("antiberty",)
EXTERNAL_DATA_ABOVE = 1800 * 1024**2  # bytes of float32 weights; a graph file must stay under 2 GiB


@dataclass(frozen=True)
class ExportConfig:
    """Everything `export` needs besides the model; frozen so a run cannot drift midway."""

    model: str
    out: Path | None = None
    revision: str | None = None
    force: bool = False
    allow_unfused: bool = False
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    int8: bool = False
    int8_recipe: str = "auto"  # or a name from precision.INT8_RECIPES; auto keeps the fastest that passes
    bf16: bool = False  # the unfused graph for OpenVINO: encoder in bf16, MLM head in float32
    probe_texts: tuple[str, ...] = ()  # realistic texts for the gates, stored in the artifact as probes.txt
    # graphs of models whose float32 weights exceed this keep them in ONNX external data (protobuf stops
    # at 2 GB); tests lower it to exercise that path on tiny models
    external_data_above: int = EXTERNAL_DATA_ABOVE
    # what the artifact serves: "fill-mask" (the default), "sparse" (SPLADE), "embed" (hidden states)
    tasks: tuple[str, ...] = ("fill-mask",)
    sparse_pooling: str = "max"  # SPLADE v2/++; "sum" for SPLADE v1
    layer: int | None = None     # embed: the hidden states given; None the last, 0 the embeddings, -1 the last

    @property
    def precisions(self) -> tuple[str, ...]:
        """fill-mask variants to build; fp32 always, since the others are derived from it."""
        return (("fp32",) + (("fp16",) if self.fp16 else ()) + (("int8",) if self.int8 else ())
                + (("bf16",) if self.bf16 else ()))

    def __post_init__(self) -> None:
        if not isinstance(self.external_data_above, int) or self.external_data_above < 0:
            raise ConfigError(f"external_data_above must be a number of bytes, got {self.external_data_above!r}")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool):
            raise ConfigError(f"opset must be an integer, got {self.opset!r}")
        if self.opset < MIN_OPSET:
            raise ConfigError(f"opset {self.opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
        if self.opset > MAX_OPSET:
            raise ConfigError(f"opset {self.opset} is newer than torch.onnx can write (at most {MAX_OPSET})")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must name a directory, a hub id or a built-in model, got {self.model!r}")
        if self.out is not None:
            try:  # the manifest records paths as JSON text: refused now, not after the model was traced
                str(self.out).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(f"the output path {str(self.out)!r} is not valid UTF-8 (byte "
                                  f"{exc.object[exc.start]!r} at character {exc.start}); choose a UTF-8 name") from None
        if isinstance(self.probe_texts, str) or not all(isinstance(t, str) and t.strip() for t in self.probe_texts):
            raise ConfigError("probe_texts must be a sequence of non-empty texts")
        if any(len(t.splitlines()) != 1 for t in self.probe_texts):
            raise ConfigError("each probe text must be one line: the artifact stores them one per line")
        if isinstance(self.tasks, str) or not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ConfigError(f"tasks must be a non-empty list of {', '.join(TASKS)}, got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"a task is named twice in {list(self.tasks)}")
        if self.sparse_pooling not in ("max", "sum"):
            raise ConfigError("sparse pooling must be max (SPLADE v2, ++) or sum (SPLADE v1), "
                              f"got {self.sparse_pooling!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or isinstance(self.layer, bool)):
            raise ConfigError(f"layer must be an integer, got {self.layer!r}")
        if self.layer is not None and "embed" not in self.tasks:
            raise ConfigError("layer is the embed task's; add the embed task (--task embed) or leave it out")
        if self.sparse_pooling != "max" and "sparse" not in self.tasks:
            raise ConfigError("sparse pooling is the sparse task's; add the sparse task (--task sparse) or "
                              "leave it out")
        if self.int8_recipe != "auto":
            from .passes.int8 import find_int8_recipe  # numpy and onnx tools: not at the CLI's start

            find_int8_recipe(self.int8_recipe)  # raises on an unknown name


# fp32 must match PyTorch to float rounding; top-k sets must match except where PyTorch itself
# ranks two tokens within max_abs_logit of each other (a tie at fp32 precision is no disagreement).
# 2e-5 relative: rxnmapper's ALBERT (12 passes through one shared layer, logits up to 20) differs
# from PyTorch by 1.3e-4 even unfused.
FP32_TOLERANCE = Tolerance(max_abs_logit=1e-4, max_rel_logit=2e-5, min_top1_agreement=1.0, min_topk_overlap=1.0)
# Reduced precisions are judged on accuracy against fp32 PyTorch, on realistic text.
FP16_TOLERANCE = Tolerance(min_top1_agreement=0.995, min_topk_overlap=0.99, scope="realistic", max_abs_prob=0.25)
INT8_TOLERANCE = Tolerance(min_top1_agreement=0.995, min_topk_overlap=0.99, scope="realistic", max_abs_prob=0.25)
# bf16 (8 bits of mantissa, fp16 has 11) for the encoder, float32 for the head: judged like fp16.
BF16_TOLERANCE = Tolerance(min_top1_agreement=0.995, min_topk_overlap=0.99, scope="realistic", max_abs_prob=0.25)
TOLERANCES = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE, "bf16": BF16_TOLERANCE}
# The logits form (unfused, for optimum) is exported from the same model as the fused fp32 graph, which
# is judged on every probe; the synthetic shapes (1 token to the maximum length, padding, every token
# type) check its export without paying for a second pass over the realistic texts.
LOGITS_TOLERANCE = Tolerance(max_abs_logit=1e-4, max_rel_logit=2e-5, min_top1_agreement=1.0, min_topk_overlap=1.0,
                             scope="shapes")

# The sparse and embed tasks compare vectors per text with PyTorch's (verify/tasks.py). SPLADE fp32: every
# weight within 1e-3 and the same top-20 terms, swaps between terms within 1e-4 of each other ignored; reduced
# precisions keep the vector's direction (cosine >= 0.99) and 90% of its top-20 terms on realistic text.
SPARSE_TOLERANCES = {
    "fp32": VectorTolerance(max_abs=1e-3, min_topk_overlap=1.0, top_k=20, tie=1e-4),
    **{p: VectorTolerance(min_cosine=0.99, min_topk_overlap=0.9, top_k=20, tie=1e-4, scope="realistic")
       for p in ("fp16", "int8", "bf16")},
}
# Embeddings fp32: the mean-pooled vector's cosine >= 0.99999, every token's >= 0.9999; reduced: the pooled
# vector's >= 0.995 on realistic text.
EMBED_TOLERANCES = {
    "fp32": VectorTolerance(min_cosine=0.99999, min_token_cosine=0.9999),
    **{p: VectorTolerance(min_cosine=0.995, scope="realistic") for p in ("fp16", "int8", "bf16")},
}
