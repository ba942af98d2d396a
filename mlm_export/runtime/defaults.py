"""Which graph `providers="auto"` opens for a task, and why: a measurement of this machine when the user ran
`mlm-export tune`, else the policy table's row for this CPU class (`variants.auto_order`).

Tuning records live in the user's cache, never in the artifact (it may be signed or read-only): one JSON
file per artifact and CPU, named after the manifest's sha256 and the CPU model, so a copied artifact
keeps its record and an edited one (a new manifest) loses it. Torch-free; reading a record never fails
a load: a missing, unreadable or stale record is the table's choice, with the reason saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..variants import CPU, CUDA, OPENVINO, auto_order, preferred, runs_on
from .backends import choose_backend, cpu_class

TUNING_SCHEMA = "tuning-v1"
CACHE_ENV = "MLM_EXPORT_CACHE"  # the folder for tuning records; default: $XDG_CACHE_HOME/mlm-export
_CLASS_WORDS = {"amx": "AMX (Intel Xeon)", "avx512_bf16": "AVX-512 BF16 without AMX (e.g. AMD Zen 4)",
                "other": "neither AMX nor AVX-512 BF16"}


@dataclass(frozen=True)
class VariantTiming:
    """One variant's medians on the tuned workloads, and its time relative to the fastest (geometric mean)."""

    variant: str
    backend: str
    median_ms: dict[str, float]
    relative: float


@dataclass(frozen=True)
class TaskTuning:
    """The winner of one task on this CPU: the fastest variant whose gate passed at export."""

    task: str
    winner: str
    backend: str
    threads: int | None
    created: str
    timings: tuple[VariantTiming, ...] = ()

    def summary(self) -> str:
        return ", ".join(f"{t.variant} {t.relative:.2f}x" for t in sorted(self.timings, key=lambda t: t.relative))


@dataclass(frozen=True)
class TuningRecord:
    """Everything `mlm-export tune` measured for one artifact (by its manifest's sha256) on one CPU model."""

    manifest_sha256: str
    cpu_model: str
    cpu_class: str
    tasks: dict[str, TaskTuning] = field(default_factory=dict)
    schema: str = TUNING_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningRecord:
        tasks = {name: TaskTuning(**(dict(task) | {"timings": tuple(VariantTiming(**t) for t in task["timings"])}))
                 for name, task in data["tasks"].items()}
        return cls(data["manifest_sha256"], data["cpu_model"], data["cpu_class"], tasks, data["schema"])


@dataclass(frozen=True)
class DefaultChoice:
    """The graph `auto` opens for a task, where, and the reason a user reads in `info`."""

    variant: str
    backend: str
    reason: str
    tuned: bool = False


def cache_dir() -> Path:
    """Where tuning records live: `MLM_EXPORT_CACHE`, else `$XDG_CACHE_HOME/mlm-export` (`~/.cache/mlm-export`)."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mlm-export"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def manifest_sha256(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def record_path(manifest_bytes: bytes, model: str | None = None) -> Path:
    """The record's file for this artifact and CPU: the manifest's sha256, then a short hash of the CPU model
    and class (a VM may report a bare "AMD EPYC": the class tells Zen generations apart)."""
    cpu = f"{model or cpu_model()}|{cpu_class()}"
    name = f"{manifest_sha256(manifest_bytes)}-{hashlib.sha256(cpu.encode()).hexdigest()[:12]}.json"
    return cache_dir() / "tuning" / name


def read_record(manifest_bytes: bytes) -> TuningRecord | None:
    """This machine's record for the artifact, or None (none, unreadable, or for another manifest or CPU)."""
    path = record_path(manifest_bytes)
    try:
        record = TuningRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (record.schema != TUNING_SCHEMA or record.manifest_sha256 != manifest_sha256(manifest_bytes)
            or record.cpu_model != cpu_model()):
        return None
    return record


def default_choice(manifest_bytes: bytes, variants: Mapping[str, Any], task: str,
                   providers: str | Sequence[str] = "auto") -> DefaultChoice:
    """The variant among `variants` (graphs of `task`) that `providers` opens when no variant is named, with
    the reason: with "auto" on a machine without a GPU, this CPU's tuning record when there is one whose
    winner runs here, else the policy table's row for the CPU class."""
    backend = choose_backend(dict(variants), providers, task=task)
    table = preferred(variants, backend, task)
    auto = isinstance(providers, str) and providers.lower() == "auto"
    if not auto:
        return DefaultChoice(table, backend, f"providers={providers!r} runs {table} first")
    if backend == CUDA:
        return DefaultChoice(table, backend, f"ONNX Runtime sees a GPU: {table} is the variant for CUDA")
    record = read_record(manifest_bytes)
    tuned = record.tasks.get(task) if record else None
    cls = cpu_class()
    why = (f"this CPU ({cpu_model()}) has {_CLASS_WORDS[cls]}; the policy table, measured on that class, orders "
           f"{' > '.join(auto_order(cls, task))} there for {task}, and {table} is the first this artifact has "
           "(`mlm-export tune` measures this machine instead)")
    if tuned is None:
        return DefaultChoice(table, backend, why)
    winner = variants.get(tuned.winner)
    if winner is None or not _usable(winner.precision, tuned.backend):
        return DefaultChoice(table, backend, f"the tuning record's winner {tuned.winner} does not run here now "
                                             f"({tuned.backend}); {why}")
    return DefaultChoice(tuned.winner, tuned.backend,
                         f"measured fastest on this CPU by `mlm-export tune` ({tuned.created}, "
                         f"{tuned.threads or 'default'} threads: {tuned.summary()})", tuned=True)


def _usable(precision: str, backend: str) -> bool:
    from .openvino import cpu_has_bf16, openvino_usable

    if backend == OPENVINO:
        return runs_on(precision, OPENVINO) and openvino_usable() and cpu_has_bf16()
    return backend == CPU and runs_on(precision, CPU)
