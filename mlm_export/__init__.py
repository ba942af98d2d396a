"""mlm-export: verified, optimized ONNX artifacts for masked language models (BERT and its kin, ESM).

Importing this package never imports torch or transformers: `OnnxMaskFiller` is for apps that ship
without them. Everything but the exceptions loads lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    ConfigError,
    ExportError,
    FusionError,
    InputError,
    IntegrityError,
    Interrupted,
    MissingHeadError,
    MlmExportError,
    ParityError,
    ProviderError,
    SignatureError,
    SourceError,
    StorageError,
)

__version__ = "0.3.0"

__all__ = [
    "ArtifactError", "ConfigError", "ExportConfig", "ExportError", "FusionError", "InputError",
    "IntegrityError", "Interrupted", "MissingHeadError", "MlmExportError", "OnnxMaskFiller", "ParityError",
    "ProviderError", "SignatureError", "SourceError", "StorageError", "export_model", "sign_artifact",
    "verify_artifact",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers (py.typed)
    from .exporter.pipeline import export_model
    from .config import ExportConfig
    from .runtime.predictor import OnnxMaskFiller
    from .signing import sign_artifact
    from .verify import verify_artifact

# Loaded on first use: `import mlm_export` (and so the CLI's start) stays cheap, and a Ctrl-C during
# start-up lands in the CLI's handler rather than in an import of numpy.
_LAZY = {"OnnxMaskFiller": ("runtime.predictor", "OnnxMaskFiller"),
         "export_model": ("exporter.pipeline", "export_model"),
         "verify_artifact": ("verify", "verify_artifact"),
         "sign_artifact": ("signing", "sign_artifact"),
         "ExportConfig": ("config", "ExportConfig")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mlm_export' has no attribute {name!r}")
