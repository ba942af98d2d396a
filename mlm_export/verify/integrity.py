"""The torch-free integrity check of a serving box (`mlm-export verify --integrity`), which `mlm-export serve`
runs on what it loaded before `/health` answers 200.

It proves what parity against PyTorch cannot be re-proven without the source weights: the files are the
ones the manifest lists (sha256, and the Ed25519 signature with a key), every graph loads on the backend
that would serve it with the inputs and outputs the manifest declares, and each task answers one
realistic call with finite values of the right shape. Parity itself was proven at export (and by
`verify` with the weights); these checks catch a corrupted, truncated or swapped file, a backend that
cannot run a graph here (a missing OpenVINO, an onnxruntime too old for the opset), and a broken install.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifact.handle import Artifact
from ..errors import ArtifactError, GraphCheckError, MlmExportError, ProviderError
from ..manifest import FILL_MASK
from ..variants import judged_on

if TYPE_CHECKING:
    from ..runtime.graph import LoadedGraph
    from ..runtime.predictor import OnnxMaskFiller
    from ..runtime.tasks import TaskModel

SMOKE_TOKENS = 24  # the smoke text's length, at most: a realistic sequence, quick on any backend


@dataclass(frozen=True)
class GraphCheck:
    """One graph: where it loaded, and what its smoke call gave; `error` says why it failed."""

    name: str
    form: str
    provider: str | None
    smoke: str | None = None
    error: str | None = None
    skipped: str | None = None  # why it was not loaded: its backend is not installed here
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "form": self.form, "provider": self.provider, "passed": self.passed,
                "smoke": self.smoke, "error": self.error,
                "skipped": self.skipped, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class IntegrityReport:
    """The whole check: files, signature, and each graph present in the directory."""

    directory: str
    files: int
    signature: str | None  # the key's fingerprint when a key was given and matched
    graphs: tuple[GraphCheck, ...]
    left_out: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Every graph loaded and answered, and at least one did (a box that can load none cannot serve)."""
        return all(g.passed for g in self.graphs) and any(g.skipped is None for g in self.graphs)

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "passed": self.passed, "files": self.files,
                "signature": self.signature, "graphs": [g.to_dict() for g in self.graphs],
                "left_out": list(self.left_out)}

    def summary(self) -> str:
        lines = [f"{self.directory}: {self.files} files match their sha256"
                 + (f"; signature valid (key {self.signature})" if self.signature else "; signature not checked")]
        for g in self.graphs:
            where = f" on {g.provider}" if g.provider else ""
            state = "FAILED" if not g.passed else "skipped" if g.skipped else "ok"
            lines.append(f"  {g.name:<14} {state:<8}{where}: {g.smoke or g.error or g.skipped}")
        if self.left_out:
            lines.append(f"  left out of this slim copy: {', '.join(self.left_out)}")
        lines.append("integrity: passed" if self.passed else "integrity: FAILED")
        return "\n".join(lines)


def check_integrity(directory: str | Path | Artifact, providers: str | Sequence[str] = "auto",
                    threads: int | None = None, public_key: Any = None) -> IntegrityReport:
    """Hashes (and the signature, with `public_key`), then every graph loaded where it would serve: the
    backend `providers` names when the graph's precision runs there, else the one it is built for (int8 on
    the CPU, bf16 on OpenVINO), and one smoke call per graph. Raises `IntegrityError`/`SignatureError` for
    a file or signature that does not match; a graph that fails to load or answer is a failed check in the
    report (`passed` False), as verify reports a parity failure."""
    from ..runtime.backends import requested_providers
    from ..runtime.graph import LoadedGraph, artifact_from
    from ..runtime.threads import check_threads

    artifact = artifact_from(directory, public_key)
    check_threads(threads)
    artifact.check_files()
    tokenizer = artifact.tokenizer()
    checks = []
    for name, entry in artifact.graphs.items():
        start = time.perf_counter()
        where = judged_on(entry.precision, providers)
        if where == "openvino":
            try:
                requested_providers(where)
            except ProviderError as exc:  # not installed: nothing here would serve this graph
                checks.append(GraphCheck(name, entry.form, None, skipped=f"not loaded: {exc}"))
                continue
        try:
            graph = LoadedGraph.open(artifact, name, where, threads)
            smoke = smoke_graph(graph, tokenizer)
        except MlmExportError as exc:  # a backend missing here, IO unlike the manifest's, a failed run
            checks.append(GraphCheck(name, entry.form, None, error=f"{type(exc).__name__}: {exc}",
                                     seconds=time.perf_counter() - start))
            continue
        checks.append(GraphCheck(name, entry.form, graph.provider, smoke, seconds=time.perf_counter() - start))
    fingerprint = artifact.signature.fingerprint if artifact.signature is not None else None
    return IntegrityReport(str(artifact.path), len(artifact.present.files), fingerprint, tuple(checks),
                           artifact.left_out)


def smoke_graph(graph: LoadedGraph, tokenizer: Any) -> str:
    """One realistic call through the task class that serves `graph`; a line saying what came back."""
    from ..runtime.embed import Embedder
    from ..runtime.predictor import OnnxMaskFiller
    from ..runtime.sparse import SparseEncoder

    form = graph.entry.form
    if form == FILL_MASK:
        return smoke_fill_mask(OnnxMaskFiller(graph, tokenizer))
    if form == "sparse":
        return smoke_task(SparseEncoder(graph, tokenizer))
    if form == "embed":
        return smoke_task(Embedder(graph, tokenizer))
    return smoke_logits(graph, tokenizer)


def smoke_text(artifact: Artifact, tokenizer: Any) -> str:
    """A text the model reads well: the first of its realistic probe set (packaged, or the user's stored in the
    artifact), cut to a few tokens; without one, a few ordinary tokens of the vocabulary."""
    text = probe_texts(artifact, tokenizer, SMOKE_TOKENS - 2)[0]
    spans = tokenizer.encode(text, add_special_tokens=False).offsets[: SMOKE_TOKENS - 2]
    return text[: spans[-1][1]] if spans else text


def probe_texts(artifact: Artifact, tokenizer: Any, tokens: int = 8) -> list[str]:
    """The artifact's realistic probe texts (packaged, or the user's stored in it); without them, one text of
    `tokens` ordinary tokens of the vocabulary."""
    from .probes import ARTIFACT_PROBES, ARTIFACT_SET, PACKAGED_SETS, packaged_texts

    manifest = artifact.manifest
    if manifest.probe_set in PACKAGED_SETS:
        return packaged_texts(manifest.probe_set)
    if manifest.probe_set == ARTIFACT_SET and ARTIFACT_PROBES in manifest.files:
        texts = [t for t in artifact.checked_bytes(ARTIFACT_PROBES).decode("utf-8").splitlines() if t.strip()]
        if texts:
            return texts
    specials = set(manifest.tokenizer.every_special_id)
    ordinary = [i for i in range(manifest.model.vocab_size) if i not in specials]
    middle = len(ordinary) // 2  # past a vocabulary's leading bytes, [unused] slots and punctuation
    return [str(tokenizer.decode([ordinary[(middle + i) % len(ordinary)] for i in range(tokens)]))]


def masked_text(text: str, tokenizer: Any, mask_token: str, at: tuple[float, ...] = (0.5,)) -> str:
    """`text` with its tokens at the fractions `at` of its length (default: the middle one) replaced by the mask
    token (by character offsets: any tokenizer)."""
    offsets = [span for span in tokenizer.encode(text, add_special_tokens=False).offsets if span[1] > span[0]]
    if not offsets:
        raise ArtifactError(f"the tokenizer reads no token in the smoke text {text[:40]!r}; re-export the artifact")
    for index in sorted({min(int(f * len(offsets)), len(offsets) - 1) for f in at}, reverse=True):
        start, end = offsets[index]
        text = text[:start] + mask_token + text[end:]
    return text


def smoke_fill_mask(filler: OnnxMaskFiller) -> str:
    text = masked_text(smoke_text(filler.artifact, filler.tokenizer), filler.tokenizer, filler.mask_token)
    candidates: Any = filler(text, top_k=5)  # one mask: its candidates
    if len(candidates) != min(5, filler.vocab_size) or not all(0 <= c["score"] <= 1 for c in candidates):
        raise ArtifactError(f"the {filler.variant} graph's fill-mask answer is malformed: {candidates!r:.200}")
    best = candidates[0]
    line = f"fill-mask top-1 {best['token_str']!r} {best['score']:.3f}"
    if "target_ids" in filler.graph.input_names:
        score = filler.score(smoke_text(filler.artifact, filler.tokenizer), batch_size=64)
        if not np.isfinite(score.pll) or score.pll > 0:
            raise ArtifactError(f"the {filler.variant} graph's pseudo-log-likelihood is {score.pll}, not a finite "
                                "log-probability")
        line += f"; PLL {score.pll:.2f} over {score.n_tokens} tokens"
    return line


def smoke_task(model: TaskModel) -> str:
    text = smoke_text(model.artifact, model.tokenizer)
    rows = model.encode_rows([text])  # type: ignore[attr-defined]
    row = rows[0]
    if row.error is not None:
        raise ArtifactError(f"the {model.variant} graph refused its smoke text: {row.error}")
    value = row.value
    if model.task == "sparse":
        if not len(value.indices) or not np.isfinite(value.values).all():
            raise ArtifactError(f"the {model.variant} graph gave an empty or non-finite sparse vector")
        return f"sparse vector of {len(value.indices)} terms"
    if value.ndim != 1 or value.shape[0] != model.manifest.model.hidden_size or not np.isfinite(value).all():
        raise ArtifactError(f"the {model.variant} graph gave an embedding of shape {value.shape}")
    return f"embedding of {value.shape[0]} values, norm {float(np.linalg.norm(value)):.2f}"


def smoke_logits(graph: LoadedGraph, tokenizer: Any) -> str:
    """A logits graph (what optimum and Triton read): one row's logits, vocabulary-wide and finite."""
    ids = tokenizer.encode(smoke_text(graph.artifact, tokenizer)).ids
    logits = graph.run([graph.output_names[0]], graph.feeds(np.array([ids], dtype=np.int64)))[0]
    vocab = graph.artifact.manifest.model.vocab_size
    if logits.shape[-1] != vocab or not np.isfinite(logits).all():
        raise ArtifactError(f"the {graph.name} graph gave logits of shape {logits.shape}, or non-finite ones")
    return f"logits {list(logits.shape)}"


def require_passed(report: IntegrityReport) -> None:
    """A `GraphCheckError` naming every failed graph, for callers (the server) that must not go on."""
    failed = [g for g in report.graphs if not g.passed]
    if failed:
        raise GraphCheckError("; ".join(f"{g.name}: {g.error}" for g in failed), report.to_dict())


__all__ = ["GraphCheck", "IntegrityReport", "check_integrity", "masked_text", "require_passed",
           "smoke_graph", "smoke_text"]
