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
written to the user's cache (`runtime.tuning_records`), which `providers="auto"` reads (`runtime.defaults`).
Torch-free.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact.handle import Artifact
from .errors import ArtifactError, InputError
from .manifest import FILL_MASK
from .progress import stage
from .runtime.backends import cpu_class
from .runtime.tuning_records import (
    TaskTuning,
    TuningRecord,
    VariantTiming,
    check_writable,
    cpu_model,
    forget_tasks,
    manifest_sha256,
    read_record,
    write_record,
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
    check_writable(artifact.manifest_bytes)  # before minutes of timing, not after
    texts = _texts(artifact)
    skipped: dict[str, str] = {}
    tuned: dict[str, TaskTuning] = {}
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
    record = TuningRecord(manifest_sha256(artifact.manifest_bytes), cpu_model(), cpu_class(), tuned)
    path = write_record(artifact.manifest_bytes, record)
    return TuneResult(read_record(artifact.manifest_bytes) or record, path, skipped)


def forget(directory: str | Path | Artifact, tasks: Sequence[str] = ()) -> tuple[Path | None, tuple[str, ...]]:
    """Remove `tasks` (default: all) from this machine's record for the artifact, so the policy table decides
    again: the record's path (None: there was none) and the tasks removed."""
    artifact = directory if isinstance(directory, Artifact) else Artifact.open(directory)
    return forget_tasks(artifact.manifest_bytes, tasks)


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
