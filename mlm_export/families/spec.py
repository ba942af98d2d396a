"""What one masked-LM family is, for every stage that must know: one record, read by export,
verify, the probe builder and the manifest (the predictor never reads it: the manifest tells it all).

In the spirit of optimum's per-architecture OnnxConfig, but one record instead of three registries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ATTENTION_REQUIRED = "required"  # ONNX Runtime fuses attention in every layer, or the export fails
ATTENTION_NONE = "none"          # ONNX Runtime has no fusion for this attention; exported unfused


@dataclass(frozen=True)
class SpecialTokens:
    """Default names by role, used when the checkpoint's tokenizer files do not name them."""

    mask: str
    cls: str
    sep: str
    pad: str
    unk: str


def _max_position_embeddings(config: Any) -> int:
    return int(config.max_position_embeddings)


def _nothing(model: Any) -> None:
    return None


@dataclass(frozen=True)
class FamilySpec:
    """One family of encoder + MLM head checkpoints."""

    name: str
    model_types: tuple[str, ...]       # config.json's model_type values that mean this family
    architectures: tuple[str, ...]     # class names in config.json's `architectures` that mean it
    weight_prefix: str                 # the encoder's weight-name prefix ("bert."), to infer the family
    model_class: str                   # the transformers class that loads the checkpoint with its head
    head_prefixes: tuple[str, ...]     # weight-name prefixes of the MLM head: all must load, or refuse
    token_types: bool                  # whether the graphs take token_type_ids
    specials: SpecialTokens
    encoder: Callable[[Any], Any]      # model -> the encoder module (hidden states out)
    head: Callable[[Any], Any]         # model -> a module mapping hidden states to vocabulary logits
    attention: str = ATTENTION_REQUIRED
    attn_implementation: str = "eager"  # the one ONNX Runtime's fusions match after a TorchScript export
    usable_length: Callable[[Any], int] = _max_position_embeddings  # tokens a sequence may hold
    prepare_trace: Callable[[Any], None] = _nothing  # undo state an earlier run left (caches) before tracing
    # whether a checkpoint whose config.json names neither model_type nor architecture may be taken for this
    # family from its weight names: False for a family that shares its weight_prefix with another
    guess_from_weights: bool = True

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask") + (("token_type_ids",) if self.token_types else ())
