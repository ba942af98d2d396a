"""ESM protein language models (EsmForMaskedLM): rotary positions (ESM-2) or absolute ones (ESM-1b),
pre-LayerNorm blocks.

ONNX Runtime's optimizer has no attention fusion for ESM's attention, so ESM graphs are exported
unfused (SkipLayerNormalization and BiasGelu still fuse); the manifest records `fusion.mode: none`.
"""

from __future__ import annotations

from typing import Any

from .spec import ATTENTION_NONE, FamilySpec, SpecialTokens


def _head(model: Any) -> Any:
    """EsmLMHead with its bias-free decoder and separate bias as one linear: a Gemm on the tied
    embedding matrix, where the decoder alone would trace to a MatMul with a transposed copy of it."""
    import torch
    from transformers.models.esm.modeling_esm import gelu

    class GemmHead(torch.nn.Module):
        def __init__(self, lm_head: Any) -> None:
            super().__init__()
            self.lm_head = lm_head

        def forward(self, features):
            head = self.lm_head
            x = head.layer_norm(gelu(head.dense(features)))
            return torch.nn.functional.linear(x, head.decoder.weight, head.bias)

    return GemmHead(model.lm_head)


def _forget_rotary_tables(model: Any) -> None:
    """ESM caches its rotary cos/sin tables per sequence length in Python. A trace that finds them
    cached for its sample length bakes them in as constants, and the graph then fails on any other
    length; emptied, each trace records how they are computed from the input."""
    for module in model.modules():
        if hasattr(module, "_seq_len_cached"):
            module._seq_len_cached = None


def _usable_length(config: Any) -> int:
    """Absolute positions count from `pad_token_id + 1`, as in RoBERTa; rotary ones have no table."""
    offset = int(config.pad_token_id) + 1 if config.position_embedding_type == "absolute" else 0
    return int(config.max_position_embeddings) - offset


ESM = FamilySpec(
    name="esm",
    model_types=("esm",),
    architectures=("EsmForMaskedLM",),
    weight_prefix="esm.",
    model_class="EsmForMaskedLM",
    head_prefixes=("lm_head.",),
    token_types=False,
    specials=SpecialTokens(mask="<mask>", cls="<cls>", sep="<eos>", pad="<pad>", unk="<unk>"),
    encoder=lambda model: model.esm,
    head=_head,
    attention=ATTENTION_NONE,
    prepare_trace=_forget_rotary_tables,
    usable_length=_usable_length,
)

SPECS = (ESM,)  # what the registry collects from this module
