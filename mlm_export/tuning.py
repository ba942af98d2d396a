"""`mlm-export tune`: time an artifact's variants on this machine and record the fastest accurate one.

The policy table picks the variant `auto` runs by CPU class, from the project's measurements on two
CPUs. Another CPU model, another thread count or another model's shape can order the variants
differently; tuning measures them where they will run. Each variant that runs on this CPU (ONNX
Runtime's CPU provider; OpenVINO for bf16 where it computes in bf16) and passed its gate at export
is timed on the artifact's own workload shapes, built from its realistic probe texts:
- fill-mask: one text with one mask, 32 texts with two masks each, and one text's PLL (a masked copy per
  token, the scoring workload);
- sparse and embed: one text and 32 texts.
Variants run one at a time, each after a warm-up, in two rounds of opposite order; a variant's median per
shape is compared to the fastest's, and the geometric mean of those ratios ranks them. The winner is
written to the user's cache (`runtime.defaults`), which `providers="auto"` reads. Torch-free.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .artifact.handle import Artifact
from .errors import ArtifactError, InputError, StorageError
from .manifest import FILL_MASK
from .progress import stage
from .runtime.backends import cpu_class
from .runtime.defaults import (
    TaskTuning,
    TuningRecord,
    VariantTiming,
    cpu_model,
    manifest_sha256,
    read_record,
    record_path,
)
from .runtime.openvino import cpu_has_bf16, openvino_usable
from .variants import CPU, OPENVINO, runs_on

BATCH = 32
MAX_TOKENS = 128  # the workload texts are cut to this many tokens (or the model's limit)


@dataclass(frozen=True)
class TuneOptions:
    tasks: tuple[str, ...] = ()  # empty: every task the artifact has
    threads: int | None = None
    repeats: int = 5  # timed runs per shape and round (PLL: a third of them, at least one)


@dataclass(frozen=True)
class TuneResult:
    record: TuningRecord
    path: Path
    skipped: dict[str, str]  # variant -> why it was not timed

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "record": self.record.to_dict(), "skipped": self.skipped}


def tune(directory: str | Path | Artifact, options: TuneOptions = TuneOptions()) -> TuneResult:
    """Time every variant of each task that runs on this CPU, write the winners to this machine's record."""
    if not isinstance(options.repeats, int) or isinstance(options.repeats, bool) or options.repeats < 1:
        raise InputError(f"repeats must be a positive whole number, got {options.repeats!r}")
    artifact = directory if isinstance(directory, Artifact) else Artifact.open(directory)
    artifact.check_files()
    tasks = options.tasks or tuple(t for t in (FILL_MASK, "sparse", "embed") if artifact.graphs_of(t))
    for task in tasks:
        if not artifact.graphs_of(task):
            raise ArtifactError(f"{artifact.path} has no {task} graph to tune")
    texts = _texts(artifact)
    record = read_record(artifact.manifest_bytes) or TuningRecord(
        manifest_sha256(artifact.manifest_bytes), cpu_model(), cpu_class())
    skipped: dict[str, str] = {}
    tuned = dict(record.tasks)
    for task in tasks:
        candidates = {}
        for name, entry in artifact.graphs_of(task).items():
            backend, why = _backend(entry.precision)
            if entry.parity is not None and not entry.parity.passed:
                why = "its gate failed at export"
            if why:
                skipped[name] = why
            else:
                candidates[name] = backend
        if not candidates:
            raise ArtifactError(f"no {task} variant of {artifact.path} runs on this CPU: "
                                + "; ".join(f"{n}: {w}" for n, w in skipped.items()))
        tuned[task] = _tune_task(artifact, task, candidates, texts, options)
    record = replace(record, tasks=tuned)
    return TuneResult(record, _write(artifact.manifest_bytes, record), skipped)


def forget(directory: str | Path | Artifact) -> Path | None:
    """Remove this machine's record for the artifact (the policy table decides again); the path removed."""
    artifact = directory if isinstance(directory, Artifact) else Artifact.open(directory)
    path = record_path(artifact.manifest_bytes)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    return path


def _backend(precision: str) -> tuple[str, str]:
    """Where a precision runs on this CPU, or why it does not."""
    if runs_on(precision, CPU):
        return CPU, ""
    if runs_on(precision, OPENVINO):
        if not openvino_usable():
            return OPENVINO, "OpenVINO is not installed (pip install 'mlm-export[openvino]')"
        if not cpu_has_bf16():
            return OPENVINO, "this CPU does not compute in bf16"
        return OPENVINO, ""
    return CPU, f"{precision} does not run on a CPU"


def _texts(artifact: Artifact) -> list[str]:
    """The artifact's realistic probe texts (packaged, or the user's stored in it), cut to MAX_TOKENS; without
    them, ordinary tokens of the vocabulary."""
    from .verify.integrity import probe_texts

    tokenizer = artifact.tokenizer()
    limit = min(MAX_TOKENS, artifact.manifest.model.max_length) - 2
    out = []
    for text in probe_texts(artifact, tokenizer, limit):
        spans = [s for s in tokenizer.encode(text, add_special_tokens=False).offsets if s[1] > s[0]][:limit]
        if spans:
            out.append(text[: spans[-1][1]])
    if not out:
        raise ArtifactError(f"{artifact.path}: the tokenizer reads no token in the workload texts")
    return out


def _workloads(task: str, artifact: Artifact, texts: list[str]) -> dict[str, Callable[[Any], object]]:
    """Workload name -> a call on the task's model object."""
    batch = [texts[i % len(texts)] for i in range(BATCH)]
    if task != FILL_MASK:
        return {"1 text": lambda model: model.encode(texts[:1]), f"{BATCH} texts": lambda model: model.encode(batch)}
    from .verify.integrity import masked_text

    tokenizer = artifact.tokenizer()
    mask = artifact.manifest.tokenizer.mask_token
    one = masked_text(texts[0], tokenizer, mask)
    two = [masked_text(t, tokenizer, mask, (1 / 3, 2 / 3)) for t in batch]
    return {"1 text": lambda model: model(one), f"{BATCH} texts": lambda model: model(two),
            "PLL of 1 text": lambda model: model.score(texts[0])}


def _tune_task(artifact: Artifact, task: str, candidates: dict[str, str], texts: list[str],
               options: TuneOptions) -> TaskTuning:
    workloads = _workloads(task, artifact, texts)
    samples: dict[str, dict[str, list[float]]] = {name: {w: [] for w in workloads} for name in candidates}
    order = sorted(candidates)
    with stage(f"timing {task} variants {', '.join(order)} on {len(workloads)} workloads", 2 * len(order),
               "variant") as advance:
        for names in (order, order[::-1]):
            for name in names:
                model = _open(artifact, task, name, candidates[name], options.threads)
                for workload, call in workloads.items():
                    call(model)  # warm-up: first-run allocations, OpenVINO's shape compilation
                    runs = max(1, options.repeats // 3) if workload.startswith("PLL") else options.repeats
                    for _ in range(runs):
                        start = time.perf_counter()
                        call(model)
                        samples[name][workload].append(1e3 * (time.perf_counter() - start))
                del model
                advance(1)
    medians = {name: {w: statistics.median(v) for w, v in per.items()} for name, per in samples.items()}
    best = {w: min(medians[name][w] for name in medians) for w in workloads}
    timings = tuple(VariantTiming(name, candidates[name], {w: round(v, 3) for w, v in medians[name].items()},
                                  round(math.exp(statistics.fmean(math.log(medians[name][w] / best[w])
                                                                  for w in workloads)), 4))
                    for name in order)
    winner = min(timings, key=lambda t: t.relative)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return TaskTuning(task, winner.variant, winner.backend, options.threads, created, timings)


def _open(artifact: Artifact, task: str, name: str, backend: str, threads: int | None) -> Any:
    providers = "openvino" if backend == OPENVINO else "cpu"
    if task == FILL_MASK:
        from .runtime.predictor import OnnxMaskFiller

        return OnnxMaskFiller.from_pretrained(artifact, variant=name, providers=providers, threads=threads)
    if task == "sparse":
        from .runtime.sparse import SparseEncoder

        return SparseEncoder.from_pretrained(artifact, variant=name, providers=providers, threads=threads)
    from .runtime.embed import Embedder

    return Embedder.from_pretrained(artifact, variant=name, providers=providers, threads=threads)


def _write(manifest_bytes: bytes, record: TuningRecord) -> Path:
    """The record, replaced atomically (a reader sees the old one or the new one, never half of one)."""
    path = record_path(manifest_bytes, record.cpu_model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record.to_dict(), fh, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write the tuning record {path}: {exc.strerror or exc} (set MLM_EXPORT_CACHE "
                           "to a writable folder)") from exc
    return path


def present_timings(record: TuningRecord, tasks: Sequence[str]) -> str:
    """The tune command's table: per task, each variant's medians and its relative time, the winner marked."""
    lines = [f"CPU: {record.cpu_model} ({record.cpu_class})"]
    for task in tasks:
        tuned = record.tasks[task]
        workloads = list(tuned.timings[0].median_ms)
        lines.append(f"{task}: " + " | ".join(["variant", "backend", *[f"{w} ms" for w in workloads], "relative"]))
        for t in sorted(tuned.timings, key=lambda t: t.relative):
            mark = "  <- default" if t.variant == tuned.winner else ""
            lines.append("  " + " | ".join([t.variant, t.backend.replace("ExecutionProvider", ""),
                                            *[f"{t.median_ms[w]:.1f}" for w in workloads],
                                            f"{t.relative:.2f}x"]) + mark)
    return "\n".join(lines)
