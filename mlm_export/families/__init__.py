"""The registry of masked-LM families, keyed by family name (config.json's `model_type`).

A family is one module of this package: it defines `SPECS`, a tuple of the `FamilySpec`s it adds
(most modules one; `roberta` adds RoBERTa, XLM-RoBERTa and CamemBERT), and the registry collects
every module here when the package is imported. Nothing else is edited to add a family: the
manifest stores the family as a name (format 4), and the tests run over `FAMILIES`, so a family
without its test fixture (`tests/layouts.py`, `BUILDERS`) fails a test.

Only code that needs a family's code looks it up (export, verify): `family_of` for a checkpoint,
`family_named` for an artifact's manifest. The serving path reads the manifest and never asks.

`family_of` also reads old checkpoints whose config.json has no model_type: from `architectures`,
or else from the weight names.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable

from ..errors import ArtifactError, SourceError
from ..manifest import FAMILY_NAME
from .albert import ALBERT
from .bert import BERT
from .distilbert import DISTILBERT
from .electra import ELECTRA
from .esm import ESM
from .roberta import CAMEMBERT, ROBERTA, XLM_ROBERTA
from .spec import ATTENTION_NONE, ATTENTION_REQUIRED, FamilySpec, SpecialTokens

# modules of this package that hold no family
_NOT_FAMILIES = frozenset({"spec"})


def _collect(path: Iterable[str] = __path__, package: str = __name__) -> dict[str, FamilySpec]:
    """Every module's `SPECS` in the package `package` (at `path`), by name (sorted): a module without
    them, two families of one name or one model_type, or a name a manifest cannot store, is a mistake
    caught at import."""
    found: dict[str, FamilySpec] = {}
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_") or info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        specs = getattr(module, "SPECS", None)
        if not isinstance(specs, tuple) or not specs or not all(isinstance(s, FamilySpec) for s in specs):
            raise ImportError(f"{module.__name__} defines no SPECS (a tuple of the FamilySpecs it adds); every "
                              f"module of {package} is a family module, except {', '.join(sorted(_NOT_FAMILIES))}")
        for spec in specs:
            if not re.fullmatch(FAMILY_NAME, spec.name):
                raise ImportError(f"{module.__name__}: the family name {spec.name!r} is not one a manifest can "
                                  f"store (lowercase letters, digits, '_', '.', '-'; at most 64)")
            if spec.name in found:
                raise ImportError(f"{module.__name__}: a second family named {spec.name!r}")
            taken = {t for f in found.values() for t in f.model_types} & set(spec.model_types)
            if taken:
                raise ImportError(f"{module.__name__}: model_type {sorted(taken)} already belongs to another family")
            shared = {f.name for f in found.values() if f.guess_from_weights and f.weight_prefix == spec.weight_prefix}
            if spec.guess_from_weights and shared:
                raise ImportError(f"{module.__name__}: {spec.name!r} shares its weight_prefix with {sorted(shared)}; "
                                  "set guess_from_weights=False on all but one")
            found[spec.name] = spec
    return dict(sorted(found.items()))


FAMILIES: dict[str, FamilySpec] = _collect()
SUPPORTED = ", ".join(FAMILIES)

__all__ = ["ALBERT", "ATTENTION_NONE", "ATTENTION_REQUIRED", "BERT", "CAMEMBERT", "DISTILBERT", "ELECTRA", "ESM",
           "FAMILIES", "ROBERTA", "SUPPORTED", "XLM_ROBERTA", "FamilySpec", "SpecialTokens", "family_named",
           "family_of"]


def family_named(name: str, where: str = "the artifact") -> FamilySpec:
    """The family an artifact's manifest names, for code that needs its code (verify). A manifest may
    name a family this version does not know (one added later): reading and serving it need none."""
    family = FAMILIES.get(name)
    if family is None:
        raise ArtifactError(f"{where} is of the family {name!r}, which this mlm-export does not know (it knows "
                            f"{SUPPORTED}); serving it needs no family code, but this step does: upgrade mlm-export")
    return family


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
        # families that share an encoder prefix with another (XLM-R's and CamemBERT's are RoBERTa's) are
        # never guessed from the weights: their prefix means the one that claims it
        guessable = [f for f in FAMILIES.values() if f.guess_from_weights]
        prefixes = {f.weight_prefix for f in guessable}
        found = {p for name in weight_names() for p in prefixes if name.startswith(p)}
        by_weights = {f.name for f in guessable if f.weight_prefix in found}
        if len(by_weights) == 1:
            return FAMILIES[by_weights.pop()]
        if len(by_weights) > 1:
            raise SourceError(f"{where}: config.json has no model_type, and its weights look like several "
                              f"families ({', '.join(sorted(by_weights))}); add \"model_type\" to config.json")
    raise SourceError(f"{where}: config.json has no model_type and names no known architecture "
                      f"({architectures or 'none'}); add \"model_type\" (one of {SUPPORTED}) to config.json")
