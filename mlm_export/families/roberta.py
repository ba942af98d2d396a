"""RoBERTa and its multilingual and French siblings: no token types, positions offset by padding.

RoBERTa numbers positions from `pad_token_id + 1`, so a table of 514 rows holds 512 tokens.
"""

from __future__ import annotations

from typing import Any

from .spec import FamilySpec, SpecialTokens

BPE_SPECIALS = SpecialTokens(mask="<mask>", cls="<s>", sep="</s>", pad="<pad>", unk="<unk>")


def _usable_length(config: Any) -> int:
    return int(config.max_position_embeddings) - int(config.pad_token_id) - 1


def _roberta(name: str, model_type: str, architecture: str, guess_from_weights: bool = False) -> FamilySpec:
    return FamilySpec(
        name=name,
        model_types=(model_type,),
        architectures=(architecture,),
        weight_prefix="roberta.",
        model_class=architecture,
        head_prefixes=("lm_head.",),
        token_types=False,
        specials=BPE_SPECIALS,
        encoder=lambda model: model.roberta,
        head=lambda model: model.lm_head,
        usable_length=_usable_length,
        guess_from_weights=guess_from_weights,  # their weights all say "roberta.": RoBERTa's alone
    )


ROBERTA = _roberta("roberta", "roberta", "RobertaForMaskedLM", guess_from_weights=True)
XLM_ROBERTA = _roberta("xlm-roberta", "xlm-roberta", "XLMRobertaForMaskedLM")
CAMEMBERT = _roberta("camembert", "camembert", "CamembertForMaskedLM")

SPECS = (ROBERTA, XLM_ROBERTA, CAMEMBERT)  # what the registry collects from this module
