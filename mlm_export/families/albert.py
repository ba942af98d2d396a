"""ALBERT: factorized embeddings (a projection into the first layer) and layers sharing weights."""

from __future__ import annotations

from .bert import WORDPIECE_SPECIALS
from .spec import FamilySpec

ALBERT = FamilySpec(
    name="albert",
    model_types=("albert",),
    architectures=("AlbertForMaskedLM", "AlbertForPreTraining"),
    weight_prefix="albert.",
    model_class="AlbertForMaskedLM",
    head_prefixes=("predictions.",),
    token_types=True,
    specials=WORDPIECE_SPECIALS,
    encoder=lambda model: model.albert,
    head=lambda model: model.predictions,
)

SPECS = (ALBERT,)  # what the registry collects from this module
