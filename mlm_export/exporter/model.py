"""Model stage: a fresh model of the checkpoint's family, in eval mode, with its trained MLM head.

Always transformers' own class for the family (never remote code). A checkpoint whose head would be
newly initialised is refused: a random head predicts noise, and its parity could never be re-checked.
"""

from __future__ import annotations

from typing import Any

from ..errors import MissingHeadError, SourceError
from ..families import FamilySpec
from .source import ResolvedSource


def load_model(source: ResolvedSource, attn_implementation: str | None = None) -> Any:
    """The checkpoint as its family's MaskedLM class, in eval mode."""
    import torch  # noqa: F401  (transformers needs it; an import error is clearer here)
    import transformers
    from transformers.utils import logging as hf_logging

    family = source.family
    config_class = transformers.CONFIG_MAPPING[family.model_types[0]]
    model_class = getattr(transformers, family.model_class)
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing weights ourselves, precisely
    try:
        config = config_class.from_pretrained(source.model_dir)
        model, info = model_class.from_pretrained(source.model_dir, config=config, **kwargs)
    except Exception as exc:  # transformers, torch and safetensors each raise their own kinds
        raise SourceError(f"could not load {source.model_dir}: {_load_failure(exc)}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    head = [k for k in missing if k.startswith(family.head_prefixes)]
    if head:
        raise MissingHeadError(
            f"{source.spec.location} has no trained MLM head: {', '.join(head)} would be newly "
            f"initialised. A random head predicts noise; export a checkpoint saved with its MLM head "
            f"({family.model_class}), not an encoder-only one.")
    if missing:
        raise SourceError(f"{source.spec.location} lacks encoder weights: {', '.join(missing[:8])}"
                          + (" ..." if len(missing) > 8 else ""))
    return model.eval()


def model_facts(config: Any, family: FamilySpec) -> dict[str, int]:
    """The shape facts the manifest records and the runtime trusts."""
    return {"num_layers": int(config.num_hidden_layers), "hidden_size": int(config.hidden_size),
            "num_heads": int(config.num_attention_heads), "vocab_size": int(config.vocab_size),
            "type_vocab_size": int(getattr(config, "type_vocab_size", 0) or 0) if family.token_types else 0,
            "max_length": int(family.usable_length(config))}


def _load_failure(exc: BaseException) -> str:
    """The cause a user can act on, found in the chain of errors transformers wraps."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        text = str(error)
        if type(error).__name__ == "UnpicklingError" or "Weights only load failed" in text:
            return ("its pickled weights hold objects other than tensors, and loading them would run "
                    "code; mlm-export refused (torch.load weights_only=True). If you trust the file, "
                    "convert it to safetensors where it came from; otherwise do not use it. "
                    f"Detail: {text.split('. ')[0]}")
        if type(error).__name__ == "SafetensorError":
            return f"a safetensors file is corrupt or truncated ({text}); download or copy it again"
    first = str(exc).splitlines()[0] if str(exc) else "no detail"
    return f"{type(exc).__name__}: {first}"
