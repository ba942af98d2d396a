"""Which graph `providers="auto"` opens for a task, and why: this machine's `mlm-export tune` record when
there is one whose winner runs here (`tuning_records`), else the policy table's row for this CPU's class and
the task (`variants.auto_order`). The reason is what `info` prints and `LoadedGraph.why` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..variants import CPU, CUDA, OPENVINO, auto_order, preferred, runs_on
from .backends import bf16_usable, choose_backend, cpu_class
from .tuning_records import cpu_model, read_record

_CLASS_WORDS = {"amx": "AMX (Intel Xeon)", "avx512_bf16": "AVX-512 BF16 without AMX (e.g. AMD Zen 4)",
                "other": "neither AMX nor AVX-512 BF16"}


@dataclass(frozen=True)
class DefaultChoice:
    """The graph `auto` opens for a task, where, and the reason a user reads in `info`."""

    variant: str
    backend: str
    reason: str
    tuned: bool = False


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
    if backend == OPENVINO:
        return runs_on(precision, OPENVINO) and bf16_usable()
    return backend == CPU and runs_on(precision, CPU)
