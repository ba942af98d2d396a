"""One exception tree, so callers can catch everything mlm-export raises with one clause.

    MlmExportError                  exit code 1 unless noted
    ├── SourceError                 the model cannot be found or loaded
    │   └── MissingHeadError        the checkpoint has no trained MLM head
    ├── ExportError                 torch.onnx or graph surgery failed
    │   └── FusionError             fewer fused attention nodes than layers
    ├── ParityError                 a graph disagrees with PyTorch beyond its gate (exit code 3)
    ├── ArtifactError               missing/invalid artifact, or one exists without --force
    │   └── IntegrityError          a file's sha256 differs from the manifest
    ├── ProviderError               an execution provider request cannot be honoured
    └── InputError (ValueError)     bad predictor input: empty, no [MASK], too long
"""

from __future__ import annotations


class MlmExportError(Exception):
    """Base of every error mlm-export raises on purpose."""

    exit_code = 1


class SourceError(MlmExportError):
    """The model source cannot be resolved or loaded."""


class MissingHeadError(SourceError):
    """A random MLM head predicts noise and its parity could never be re-verified."""


class ExportError(MlmExportError):
    """Exporting or rewriting a graph failed."""


class FusionError(ExportError):
    """Fusion silently breaks when exporters or modeling code change, so a shortfall is fatal."""


class ParityError(MlmExportError):
    """A graph's outputs differ from PyTorch's beyond the tolerance in the manifest."""

    exit_code = 3

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class ArtifactError(MlmExportError):
    """The artifact directory is missing, malformed, or would be overwritten."""


class IntegrityError(ArtifactError):
    """A file no longer matches the sha256 recorded when it was verified."""


class ProviderError(MlmExportError):
    """Falling back silently from a requested provider would hide a broken deployment."""


class InputError(MlmExportError, ValueError):
    """The predictor was given input it cannot answer."""
