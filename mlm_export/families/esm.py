"""ESM protein language models (EsmForMaskedLM): rotary positions and pre-LayerNorm blocks.

ONNX Runtime's optimizer has no attention fusion for rotary attention, so ESM graphs are exported
unfused (SkipLayerNormalization and BiasGelu still fuse); the manifest records `attention: none`.
"""

from __future__ import annotations

from .spec import ATTENTION_NONE, FamilySpec, SpecialTokens

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
    head=lambda model: model.lm_head,
    attention=ATTENTION_NONE,
)
