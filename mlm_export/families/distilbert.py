"""DistilBERT: no token types; its MLM head is four separate modules on the model.

Exported with SDPA attention: ONNX Runtime fuses Attention and EmbedLayerNormalization in that
graph, and none in the eager one.
"""

from __future__ import annotations

from typing import Any

from .bert import WORDPIECE_SPECIALS
from .spec import FamilySpec


def _head(model: Any) -> Any:
    import torch

    return torch.nn.Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm,
                               model.vocab_projector)


DISTILBERT = FamilySpec(
    name="distilbert",
    model_types=("distilbert",),
    architectures=("DistilBertForMaskedLM",),
    weight_prefix="distilbert.",
    model_class="DistilBertForMaskedLM",
    head_prefixes=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
    token_types=False,
    specials=WORDPIECE_SPECIALS,
    encoder=lambda model: model.distilbert,
    head=_head,
    attn_implementation="sdpa",
)

SPECS = (DISTILBERT,)  # what the registry collects from this module
