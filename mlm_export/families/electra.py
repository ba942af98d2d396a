"""ELECTRA generators (ElectraForMaskedLM); a discriminator has no MLM head and is refused."""

from __future__ import annotations

from typing import Any

from .bert import WORDPIECE_SPECIALS
from .spec import FamilySpec


def _head(model: Any) -> Any:
    import torch

    return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)


ELECTRA = FamilySpec(
    name="electra",
    model_types=("electra",),
    architectures=("ElectraForMaskedLM",),
    weight_prefix="electra.",
    model_class="ElectraForMaskedLM",
    head_prefixes=("generator_predictions.", "generator_lm_head."),
    token_types=True,
    specials=WORDPIECE_SPECIALS,
    encoder=lambda model: model.electra,
    head=_head,
)

SPECS = (ELECTRA,)  # what the registry collects from this module
