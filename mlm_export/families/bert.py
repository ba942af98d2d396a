"""BERT, including checkpoints saved as BertForPreTraining (its NSP head is ignored)."""

from __future__ import annotations

from .spec import FamilySpec, SpecialTokens

WORDPIECE_SPECIALS = SpecialTokens(mask="[MASK]", cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]")

BERT = FamilySpec(
    name="bert",
    model_types=("bert",),
    architectures=("BertForMaskedLM", "BertForPreTraining", "BertModel", "BertForSequenceClassification"),
    weight_prefix="bert.",
    model_class="BertForMaskedLM",
    head_prefixes=("cls.predictions.",),
    token_types=True,
    specials=WORDPIECE_SPECIALS,
    encoder=lambda model: model.bert,
    head=lambda model: model.cls,
)

SPECS = (BERT,)  # what the registry collects from this module
