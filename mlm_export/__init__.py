"""mlm-export: verified, optimized ONNX artifacts for masked language models (BERT and its kin, ESM).

Importing this package never imports torch or transformers: `OnnxMaskFiller`, `SparseEncoder` and
`Embedder` are for apps that ship without them. Everything but the exceptions loads lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    ConfigError,
    ExportError,
    FusionError,
    GraphCheckError,
    InputError,
    IntegrityError,
    Interrupted,
    MissingHeadError,
    MlmExportError,
    ParityError,
    ProviderError,
    ServeError,
    SignatureError,
    SourceError,
    StorageError,
)

__version__ = "0.3.0"

__all__ = [
    "Artifact", "ArtifactError", "Candidate", "ConfigError", "Embedder", "ExportConfig", "ExportError", "ExportResult",
    "FusionError", "GraphCheckError", "InputError", "IntegrityError", "Interrupted", "LoadedGraph", "MissingHeadError",
    "MlmExportError", "OnnxMaskFiller", "PLLScore", "ParityError", "ProviderError", "ScoreJob", "ScoreOptions",
    "ScoreSummary", "Scorer", "ServeError", "SignatureError", "SlimResult", "SourceError", "SparseEmbedding",
    "SparseEncoder", "StorageError", "TritonModel",
    "VerifyReport", "export_model", "generate_key", "score_file", "sign_artifact", "slim_artifact",
    "verify_artifact", "write_triton_repository",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers (py.typed)
    from .artifact.handle import Artifact
    from .artifact.sign import sign_artifact
    from .artifact.signature import generate_key
    from .artifact.slim import SlimResult, slim_artifact
    from .batch import ScoreJob, ScoreSummary, score_file
    from .config import ExportConfig
    from .exporter.pipeline import ExportResult, export_model
    from .runtime.embed import Embedder
    from .runtime.graph import LoadedGraph
    from .runtime.predictor import Candidate, OnnxMaskFiller
    from .runtime.scoring import PLLScore, Scorer, ScoreOptions
    from .runtime.sparse import SparseEmbedding, SparseEncoder
    from .triton import TritonModel, write_triton_repository
    from .verify import VerifyReport, verify_artifact

# Loaded on first use: `import mlm_export` (and so the CLI's start) stays cheap, and a Ctrl-C during
# start-up lands in the CLI's handler rather than in an import of numpy. The serving names never import
# torch; `export_model` and `verify_artifact` need the `export` extra.
_LAZY = {
    "Artifact": "artifact.handle", "sign_artifact": "artifact.sign", "generate_key": "artifact.signature",
    "SlimResult": "artifact.slim", "slim_artifact": "artifact.slim",
    "ScoreJob": "batch", "ScoreSummary": "batch", "score_file": "batch",
    "ExportConfig": "config", "ExportResult": "exporter.pipeline", "export_model": "exporter.pipeline",
    "LoadedGraph": "runtime.graph", "Candidate": "runtime.predictor", "OnnxMaskFiller": "runtime.predictor",
    "Embedder": "runtime.embed", "SparseEmbedding": "runtime.sparse", "SparseEncoder": "runtime.sparse",
    "PLLScore": "runtime.scoring", "Scorer": "runtime.scoring", "ScoreOptions": "runtime.scoring",
    "TritonModel": "triton", "write_triton_repository": "triton",
    "VerifyReport": "verify", "verify_artifact": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlm_export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
