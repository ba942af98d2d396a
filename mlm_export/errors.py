"""One exception tree, so callers can catch everything mlm-export raises with one clause.

    MlmExportError                  exit code 1 unless noted
    ├── ConfigError (ValueError)    invalid export settings: opset, recipe (exit code 2, like usage)
    ├── SourceError                 the model cannot be found or loaded
    │   └── MissingHeadError        the checkpoint has no trained MLM head
    ├── ExportError                 torch.onnx or graph surgery failed
    │   └── FusionError             fewer fused attention nodes than layers
    ├── ParityError                 a graph disagrees with PyTorch beyond its gate (exit code 3)
    ├── ArtifactError               missing/invalid artifact, or a destination that may not be replaced
    │   ├── StorageError            the artifact cannot be written: no space, read-only, no permission
    │   ├── IntegrityError          a file's sha256 differs from the manifest
    │   │   └── SignatureError      the manifest's Ed25519 signature is missing or wrong
    │   └── GraphCheckError         a graph does not load or answer where it would serve (verify --integrity)
    ├── ProviderError               an execution provider cannot be used, or a run on it failed
    ├── ServeError                  `serve` cannot listen on its address, or cut requests at shutdown
    └── InputError (ValueError)     bad predictor input or setting: no mask token, too long, top_k, threads

    KeyboardInterrupt               Ctrl-C (exit code 130)
    └── Interrupted                 SIGTERM or SIGHUP, raised so cleanup runs (exit code 128 + signal)

`Interrupted` is not an `MlmExportError`: like Ctrl-C it must pass through `except Exception` blocks
in third-party code, so that the partial export is removed on the way out.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .verify.parity import VerifyReport


class MlmExportError(Exception):
    """Base of every error mlm-export raises on purpose."""

    exit_code = 1


class ConfigError(MlmExportError, ValueError):
    """Settings that can never work are refused before any slow work, as a usage error."""

    exit_code = 2


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

    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report: VerifyReport | None = report


class ArtifactError(MlmExportError):
    """The artifact directory is missing or malformed, or a destination may not be replaced."""


class StorageError(ArtifactError):
    """Writing failed for a reason the user can fix on their side: disk space, permissions."""


class IntegrityError(ArtifactError):
    """A file no longer matches the sha256 recorded when it was verified."""


class SignatureError(IntegrityError):
    """sha256 catches corruption; only a signature catches a manifest edited along with a graph."""


class GraphCheckError(ArtifactError):
    """The files are intact, but a graph cannot serve on this box: `report` is the integrity check's."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report: dict[str, Any] | None = report


class ProviderError(MlmExportError):
    """Falling back silently from a requested provider would hide a broken deployment.

    Also raised when ONNX Runtime fails while running (out of memory, a device fault).
    """


class ServeError(MlmExportError):
    """The server cannot take its address (in use, not allowed), or a shutdown cut accepted requests."""


class InputError(MlmExportError, ValueError):
    """The predictor was given input or settings it cannot answer."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM from `docker stop`, systemd, `timeout`; SIGHUP), as an exception."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
