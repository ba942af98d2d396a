"""The request bodies the server takes, read into typed requests; what is wrong with one is an `InputError`
(422), named by field, before it is queued.

Shapes: Hugging Face's Inference API for fill-mask (`{"inputs": ..., "parameters": {...}}`), the same for
`/score` and `/variants`; text-embeddings-inference's for `/embed` and `/embed_sparse` (options beside
`inputs`). Per-text checks (a missing mask, a text too long) are the task classes' own, made when the
request runs, so their errors are the ones the library raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..runtime.mutations import METHODS
from ..runtime.scoring import REDUCTIONS


class TooManyInputs(InputError):
    """More texts in one request than the server takes (413, like a body over the limit)."""


@dataclass(frozen=True)
class FillMaskRequest:
    """`POST /fill-mask`: what `OnnxMaskFiller(inputs, top_k=, targets=)` answers, nesting included."""

    inputs: str | list[str]
    top_k: int = 5
    targets: tuple[str, ...] | None = None

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


@dataclass(frozen=True)
class ScoreRequest:
    """`POST /score`: one PLL row per text (`PLLScore.to_dict()`); one row for a string."""

    inputs: str | list[str]
    reduction: str = "sum"
    exclude_special: bool = False
    per_token: bool = False

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


@dataclass(frozen=True)
class EmbedRequest:
    """`POST /embed` (TEI): one vector per text, always a list of lists."""

    texts: list[str]
    normalize: bool = True
    truncate: bool = False
    pooling: str = "mean"


@dataclass(frozen=True)
class SparseRequest:
    """`POST /embed_sparse` (TEI): per text, its terms as `[{"index", "value"}]`."""

    texts: list[str]
    truncate: bool = False
    top_k: int | None = None
    threshold: float = 0.0


@dataclass(frozen=True)
class VariantsRequest:
    """`POST /variants`: one score per mutation of one wild type, in order."""

    wild_type: str
    mutations: list[str]
    method: str = "masked-marginal"
    offset: int = 1
    alphabet: str | None = None


Request = FillMaskRequest | ScoreRequest | EmbedRequest | SparseRequest | VariantsRequest


def parse_fill_mask(body: object, max_inputs: int) -> FillMaskRequest:
    data = _object(body, ("inputs", "parameters"))
    params = _parameters(data, ("top_k", "targets"))
    targets = params.get("targets")
    if targets is not None:
        names = [targets] if isinstance(targets, str) else targets
        if not isinstance(names, list) or not names or not all(isinstance(t, str) for t in names):
            raise InputError("parameters.targets must be a string or a non-empty list of strings")
        targets = tuple(names)
    return FillMaskRequest(_inputs(data, max_inputs), _positive("parameters.top_k",
                                                                                   params.get("top_k", 5)), targets)


def parse_score(body: object, max_inputs: int) -> ScoreRequest:
    data = _object(body, ("inputs", "parameters"))
    params = _parameters(data, ("reduction", "exclude_special", "per_token"))
    reduction = params.get("reduction", "sum")
    if reduction not in REDUCTIONS:
        raise InputError(f"parameters.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return ScoreRequest(_inputs(data, max_inputs), reduction,
                        _flag("parameters.exclude_special", params.get("exclude_special", False)),
                        _flag("parameters.per_token", params.get("per_token", False)))


def parse_embed(body: object, max_inputs: int) -> EmbedRequest:
    data = _object(body, ("inputs", "normalize", "truncate", "pooling"))
    pooling = data.get("pooling", "mean")
    if pooling not in ("mean", "cls"):
        raise InputError(f"pooling must be mean or cls, got {pooling!r}")
    return EmbedRequest(_listed(_inputs(data, max_inputs)), _flag("normalize", data.get("normalize", True)),
                        _flag("truncate", data.get("truncate", False)), pooling)


def parse_sparse(body: object, max_inputs: int) -> SparseRequest:
    data = _object(body, ("inputs", "truncate", "top_k", "threshold"))
    top_k = data.get("top_k")
    threshold = data.get("threshold", 0.0)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < float("inf"):
        raise InputError(f"threshold must be a number >= 0, got {threshold!r}")
    return SparseRequest(_listed(_inputs(data, max_inputs)), _flag("truncate", data.get("truncate", False)),
                         None if top_k is None else _positive("top_k", top_k), float(threshold))


def parse_variants(body: object, max_inputs: int) -> VariantsRequest:
    data = _object(body, ("inputs", "parameters"))
    inputs = data["inputs"]
    if not isinstance(inputs, Mapping):
        raise InputError('inputs must be an object: {"wild_type": "SEQUENCE", "mutations": ["A23G", ...]}')
    unknown = sorted(set(inputs) - {"wild_type", "mutations"})
    if unknown or "wild_type" not in inputs or "mutations" not in inputs:
        raise InputError('inputs must hold exactly "wild_type" (a string) and "mutations" (a list of strings such '
                         f'as "A23G" or "A23G:K45R"){"; unknown: " + ", ".join(unknown) if unknown else ""}')
    wild_type, mutations = inputs["wild_type"], inputs["mutations"]
    if not isinstance(wild_type, str):
        raise InputError(f"inputs.wild_type must be a string, got {_kind(wild_type)}")
    if isinstance(mutations, str):
        mutations = [mutations]
    if not isinstance(mutations, list) or not mutations or not all(isinstance(m, str) for m in mutations):
        raise InputError("inputs.mutations must be a string or a non-empty list of strings")
    if len(mutations) > max_inputs:
        raise TooManyInputs(f"the request has {len(mutations)} mutations; this server takes at most {max_inputs} per "
                            "request (--max-inputs): split it")
    params = _parameters(data, ("method", "offset", "alphabet"))
    method = params.get("method", "masked-marginal")
    if method not in METHODS:
        raise InputError(f"parameters.method must be one of {', '.join(METHODS)}, got {method!r}")
    offset = params.get("offset", 1)
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise InputError(f"parameters.offset must be an integer, got {offset!r}")
    alphabet = params.get("alphabet")
    if alphabet is not None and not isinstance(alphabet, str):
        raise InputError(f"parameters.alphabet must be a string of one-letter tokens, got {_kind(alphabet)}")
    return VariantsRequest(wild_type, mutations, method, offset, alphabet)


def _object(body: object, fields: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InputError(f'the body must be a JSON object such as {{"inputs": ...}}, got {_kind(body)}')
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}; this endpoint takes {', '.join(fields)}")
    if "inputs" not in body:
        raise InputError('the body has no "inputs"')
    return body


def _parameters(data: Mapping[str, Any], names: tuple[str, ...]) -> Mapping[str, Any]:
    params = data.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InputError(f"parameters must be an object, got {_kind(params)}")
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InputError(f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(names)}")
    return params


def _inputs(data: Mapping[str, Any], max_inputs: int) -> str | list[str]:
    inputs = data["inputs"]
    if isinstance(inputs, str):
        return inputs
    if not isinstance(inputs, list):
        raise InputError(f"inputs must be a string or a list of strings, got {_kind(inputs)}")
    if not inputs:
        raise InputError("inputs is an empty list; give at least one text")
    if len(inputs) > max_inputs:
        raise TooManyInputs(f"the request has {len(inputs)} inputs; this server takes at most {max_inputs} per request "
                            "(--max-inputs): split it")
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise InputError(f"input {i} is {_kind(text)}, not a string")
    return inputs


def _listed(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return value


def _kind(value: object) -> str:
    """A JSON value's type, in JSON's words."""
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
                       ((int, float), "a number"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
