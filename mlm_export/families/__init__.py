"""The registry of masked-LM families, keyed by config.json's `model_type`.

    bert  roberta  xlm-roberta  camembert  distilbert  electra  albert  esm

`family_of` also reads old checkpoints whose config.json has no model_type: from `architectures`,
or else from the weight names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import SourceError
from .albert import ALBERT
from .bert import BERT
from .distilbert import DISTILBERT
from .electra import ELECTRA
from .esm import ESM
from .roberta import CAMEMBERT, ROBERTA, XLM_ROBERTA
from .spec import ATTENTION_NONE, ATTENTION_REQUIRED, FamilySpec, SpecialTokens

FAMILIES: dict[str, FamilySpec] = {f.name: f for f in (BERT, ROBERTA, XLM_ROBERTA, CAMEMBERT, DISTILBERT,
                                                        ELECTRA, ALBERT, ESM)}
SUPPORTED = ", ".join(FAMILIES)

__all__ = ["ALBERT", "ATTENTION_NONE", "ATTENTION_REQUIRED", "BERT", "CAMEMBERT", "DISTILBERT", "ELECTRA", "ESM",
           "FAMILIES", "ROBERTA", "SUPPORTED", "XLM_ROBERTA", "FamilySpec", "SpecialTokens", "family_of"]


def family_of(config: dict, weight_names: Callable[[], Iterable[str]] | None = None,
              where: str = "the model") -> FamilySpec:
    """The family a checkpoint belongs to, from its config.json (and its weight names if need be).

    `weight_names` is only called for a config.json that names neither a model_type nor a known
    architecture: reading a pickled checkpoint's names is slow.
    """
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise SourceError(f"{where}: model_type in config.json is {model_type!r}, not a name")
    if model_type:
        for family in FAMILIES.values():
            if model_type in family.model_types:
                return family
        raise SourceError(f"{where}: model_type {model_type!r} is not supported; mlm-export supports "
                          f"{SUPPORTED}")
    architectures = config.get("architectures")
    architectures = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    by_class = {f.name for a in architectures for f in FAMILIES.values() if a in f.architectures}
    if len(by_class) == 1:
        return FAMILIES[by_class.pop()]
    if len(by_class) > 1:
        raise SourceError(f"{where}: config.json has no model_type, and its architectures {architectures} belong to "
                          f"several families ({', '.join(sorted(by_class))}); add \"model_type\" to config.json")
    if weight_names is not None:
        prefixes = {f.weight_prefix for f in FAMILIES.values()}
        found = {p for name in weight_names() for p in prefixes if name.startswith(p)}
        by_weights = {f.name for f in FAMILIES.values() if f.weight_prefix in found} - {"xlm-roberta", "camembert"}
        if len(by_weights) == 1:
            return FAMILIES[by_weights.pop()]
        if len(by_weights) > 1:
            raise SourceError(f"{where}: config.json has no model_type, and its weights look like several "
                              f"families ({', '.join(sorted(by_weights))}); add \"model_type\" to config.json")
    raise SourceError(f"{where}: config.json has no model_type and names no known architecture "
                      f"({architectures or 'none'}); add \"model_type\" (one of {SUPPORTED}) to config.json")
