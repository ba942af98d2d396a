"""Verify stage: every graph in an artifact against the PyTorch model, freshly loaded in eval mode.

The reference is reloaded rather than reused because the legacy exporter has been seen leaving a
model in training mode, where dropout would poison the comparison.

    probes.py   what the graphs are asked: synthetic shapes and realistic texts
    parity.py   how their answers are judged: agreement figures against each graph's gate
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact.handle import Artifact
from ..errors import ArtifactError, InputError, SourceError
from ..families import family_named
from ..manifest import MANIFEST, TASK_FORMS
from ..progress import stage
from .parity import Agreement, GraphParity, ParityHarness, VerifyReport, runtime_of
from .tasks import TaskHarness, TaskParity
from .probes import (
    ARTIFACT_PROBES,
    ARTIFACT_SET,
    PACKAGED_SETS,
    ProbeBatch,
    ProbeSpec,
    antibody_sequences,
    build_probes,
    choose_probe_set,
    packaged_texts,
    read_probe_file,
    text_probes,
)


__all__ = ["ARTIFACT_PROBES", "ARTIFACT_SET", "PACKAGED_SETS", "Agreement", "GraphParity", "ParityHarness",
           "ProbeBatch", "ProbeSpec", "TaskHarness", "TaskParity", "VerifyReport", "antibody_sequences", "build_probes",
           "choose_probe_set", "packaged_texts", "read_probe_file", "runtime_of", "text_probes", "verify_artifact"]


def verify_artifact(directory: Path | str, *, source: Any = None, providers: str = "cpu",
                    probe_texts: list[str] | None = None, public_key: Any = None) -> VerifyReport:
    """Compare every graph of the artifact with a freshly loaded PyTorch model.

    `source` is a model name or directory (default: the one recorded in the manifest) or a
    `ResolvedSource`. With `public_key`, the manifest's signature is checked first.
    """
    from tokenizers import Tokenizer

    from ..exporter.model import load_model, model_facts
    from ..exporter.source import ResolvedSource, SourceSpec, require_export_extra, resolve, resolve_spec

    require_export_extra()
    if isinstance(providers, str) and providers.lower() == "openvino":
        raise InputError("verify judges the bf16 variant on OpenVINO by itself; providers says where the others "
                         "run: cpu, cuda or auto")
    directory = Path(directory)
    artifact = Artifact.open(directory, public_key=public_key)
    manifest = artifact.manifest
    family_named(manifest.family, where=str(directory / MANIFEST))  # verify needs the family's code
    artifact.check_files()  # a slim copy: the graphs and files it holds
    if source is None:
        s = manifest.source
        resolved = resolve_spec(SourceSpec(s.kind, s.location, s.revision))
    elif isinstance(source, ResolvedSource):
        resolved = source
    else:
        resolved = resolve(str(source))
    if resolved.weights_sha256 != manifest.source.weights_sha256:
        raise SourceError(f"the weights at {resolved.model_dir} are not the ones this artifact was exported "
                          f"from (sha256 {manifest.source.weights_sha256[:12]}…); pass --source with the original")
    if resolved.family.name != manifest.family:
        raise ArtifactError(f"{directory / MANIFEST} says the model is {manifest.family}, but the source is "
                            f"{resolved.family.name}: the manifest was edited; re-export")
    with stage("loading the PyTorch reference (eval mode)"):
        model = load_model(resolved)
    for key, actual in model_facts(model.config, resolved.family).items():
        if getattr(manifest.model, key) != actual:  # probes are built from these numbers: they must be true
            raise ArtifactError(f"{directory / MANIFEST} says model.{key} is {getattr(manifest.model, key)}, "
                                f"but the source model has {actual}: the manifest was edited; re-export")
    tokenizer = Tokenizer.from_str(artifact.checked_bytes(manifest.tokenizer.file).decode("utf-8"))
    harness = ParityHarness(manifest, tokenizer, model, probe_texts, directory)
    tasks = [entry for entry in artifact.graphs.values() if entry.form in TASK_FORMS]
    task_harness = TaskHarness.for_entries(manifest, harness.batches, model, tasks) if tasks else None
    graphs: list[Any] = []
    for name, entry in artifact.graphs.items():
        judge = task_harness if entry.form in TASK_FORMS and task_harness is not None else harness
        graphs.append(judge.check(artifact.path_of(entry.file), name, entry, runtime_of(entry, providers)))
    return VerifyReport(str(directory), graphs, artifact.left_out)
