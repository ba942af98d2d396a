"""Which precision runs on which backend, and which one is preferred: the one policy table.

The predictor, `verify`, Triton, the Ray engine and the CLI's `info` ask these functions; none of them
decides on its own. Adding a backend is one module in `runtime/` plus its rows here.

Pure data and pure functions: facts about the machine (is there a GPU, does OpenVINO compute in bf16
here, the CPU class) are passed in by the runtime, so this module imports no runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINO"
# the names users give (`providers="cpu"`, `--providers cuda`) for each backend
BACKEND_NAMES = {"cpu": CPU, "cuda": CUDA, "openvino": OPENVINO}
OPENVINO_INSTALL_HINT = "pip install 'mlm-export[openvino]'"


@dataclass(frozen=True)
class Precision:
    """Where one precision's graphs run as built, and why not elsewhere."""

    name: str
    backends: tuple[str, ...]  # where it runs as built; the first is where verify judges it
    why_not: Mapping[str, str]  # backend -> why this precision does not run there


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", (CPU, CUDA), {OPENVINO: "its graph holds ONNX Runtime's own ops"}),
    Precision("fp16", (CUDA, CPU), {OPENVINO: "its graph holds ONNX Runtime's own ops"}),
    Precision("int8", (CPU,), {
        CUDA: "on CUDA its int8 ops fall back to the CPU, copying every tensor back and forth (an order of "
              "magnitude slower)",
        OPENVINO: "its graph holds ONNX Runtime's own ops"}),
    Precision("bf16", (OPENVINO,), {
        CPU: "it is OpenVINO's, encoder in bf16 and head in float32; ONNX Runtime has no bf16 matrix product on x86",
        CUDA: "it is OpenVINO's, encoder in bf16 and head in float32"}),
)}

# Best precision first, per task and backend. A precision missing here is never picked by default; a task
# without rows of its own (sparse, embed) takes fill-mask's, whose reasons hold for any encoder.
PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("fill-mask", CPU): ("int8", "fp32", "fp16"),
    ("fill-mask", CUDA): ("fp16", "fp32"),
    ("fill-mask", OPENVINO): ("bf16",),
}

# Which precision `providers="auto"` runs on a CPU, by CPU class (`runtime.backends.cpu_class`), fastest
# first; the first the artifact has whose backend is usable here (OpenVINO: installed and computing in bf16)
# wins. Measured, each system in its own process (docs/benchmarks.md):
# - AMX (Xeon): bf16 on OpenVINO ran batches of 32 1.4-1.65x faster than int8, PLL 5.43x the runner vs 2.9x;
# - avx512_bf16 without AMX (AMD Zen 4): int8 is the faster: fill-mask 1.23x / 1.27x optimum's int8 where
#   bf16 gave 0.79x / 0.96x (1 x 120, 32 x 120), PLL 2.79x the runner vs 2.33x, a saturation scan
#   3.0-3.3x PyTorch vs 2.3x (docs/variants.md), SPLADE 3.83x sentence-transformers vs 3.56x;
# - other CPUs compute bf16 in float32 (OpenVINO is not usable for it there): int8.
AUTO_CPU_PRECISIONS: dict[str, tuple[str, ...]] = {
    "amx": ("bf16", "int8", "fp32", "fp16"),
    "avx512_bf16": ("int8", "bf16", "fp32", "fp16"),
    "other": ("int8", "fp32", "fp16", "bf16"),
}
# A task whose work differs from fill-mask's, by (CPU class, task); the rest take the class's row above.
# - sparse on AMX: the SPLADE head (vocabulary-wide, ~90% of the work at 32 x 256) stays float in int8, where
#   OpenVINO's bf16 graph computes it in bf16 on AMX tiles: bf16 first (reasoned, not measured: the SPLADE
#   benchmark has run on Zen 4 only);
# - sparse on Zen 4: int8 3.83x sentence-transformers, bf16 3.56x (docs/tasks.md): the class's row holds.
AUTO_TASK_PRECISIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("amx", "sparse"): ("bf16", "int8", "fp32", "fp16"),
}


def auto_order(cpu: str, task: str = "fill-mask") -> tuple[str, ...]:
    """The precisions `auto` tries on a CPU of class `cpu` for `task`, fastest first."""
    return AUTO_TASK_PRECISIONS.get((cpu, task)) or AUTO_CPU_PRECISIONS.get(cpu, AUTO_CPU_PRECISIONS["other"])


class _Graph(Protocol):
    @property
    def precision(self) -> str: ...


def runs_on(precision: str, backend: str) -> bool:
    """Whether a graph of `precision` runs as built on `backend`. A backend the table does not name is
    another ONNX Runtime execution provider (TensorRT, DirectML, ROCm...): everything but bf16 runs there,
    and a precision it does not name runs on ONNX Runtime."""
    spec = PRECISIONS.get(precision)
    if spec is None:
        return backend != OPENVINO
    if backend not in (CPU, CUDA, OPENVINO):
        return OPENVINO not in spec.backends
    return backend in spec.backends


def judged_on(precision: str, providers: str | Sequence[str]) -> str | Sequence[str]:
    """Where `verify` runs a graph of `precision`, as a `providers` value: where the user asked ("cpu",
    "cuda", "auto", a list of ONNX Runtime providers) if it runs there, else where it is built to run
    (int8 on the CPU, bf16 on OpenVINO)."""
    spec = PRECISIONS.get(precision)
    if spec is None:
        return providers
    if not isinstance(providers, str):
        first = providers[0] if providers else CPU
        return providers if runs_on(precision, first) else _user_name(spec.backends[0])
    key = providers.lower()
    if key == "auto":
        return providers if {CPU, CUDA} <= set(spec.backends) else _user_name(spec.backends[0])
    return providers if BACKEND_NAMES.get(key) in spec.backends else _user_name(spec.backends[0])


def check_pairing(name: str, precision: str, backend: str, directory: Path | str,
                  variants: Mapping[str, _Graph]) -> None:
    """A ProviderError, saying what to pass instead, for a variant asked to run where it does not."""
    if runs_on(precision, backend):
        return
    why = why_not(precision, backend)
    if precision == "bf16":
        raise ProviderError(f"variant {name!r} is bf16, which runs on OpenVINO ({why}): pass providers='openvino' "
                            f"(--providers openvino; {OPENVINO_INSTALL_HINT})")
    if backend == OPENVINO:
        others = sorted(n for n, g in variants.items() if runs_on(g.precision, OPENVINO))
        fix = (f"use variant={others[0]!r} (or None) with it, or providers='cpu' for {name}" if others
               else "export with --bf16 for a variant it runs, or use providers='cpu'")
        raise ProviderError(f"providers='openvino' runs only the bf16 variant, not {name!r} ({why}), and "
                            f"{directory} has {', '.join(sorted(variants))}: {fix}")
    raise ProviderError(f"the {name} variant is for {_label(PRECISIONS[precision].backends[0])}: {why}. Use "
                        f"variant={_default_for(backend)!r} (or None) with {_label(backend)}, or "
                        f"providers='{_user_name(PRECISIONS[precision].backends[0])}' with {name}.")


def preferred(variants: Mapping[str, _Graph], backend: str, task: str = "fill-mask") -> str:
    """The variant (a graph name among `variants`, all of `task`) opened by default on `backend`: the first
    of the task's preference that the artifact has; else (a slim copy) any it has that runs there; else any."""
    row = PREFERENCE.get((task, backend)) or PREFERENCE.get(("fill-mask", backend), ("fp32",))
    for precision in row:
        name = precision if task == "fill-mask" else f"{task}.{precision}"
        if name in variants:
            return name
    readable = sorted(name for name, g in variants.items() if runs_on(g.precision, backend))
    return (readable or sorted(variants))[0]


def auto_backend(variants: Mapping[str, _Graph], gpu_backend: str | None, variant: str | None,
                 cpu: str, usable: Mapping[str, bool], task: str = "fill-mask") -> str:
    """What `providers="auto"` runs: the GPU where ONNX Runtime sees one (`gpu_backend`) and a variant runs
    there; else the backend of the first precision in the CPU class's order that the artifact has (the one
    asked for, when one is) and that runs on a backend `usable` here. `preferred` then picks the variant on
    that backend, which is that precision wherever the orders agree (int8 first on the CPU provider)."""
    wanted = [variants[variant]] if variant is not None and variant in variants else list(variants.values())
    if gpu_backend is not None and any(runs_on(g.precision, gpu_backend) for g in wanted):
        return gpu_backend  # else (an int8-only slim copy) the CPU rows below
    present = {g.precision for g in wanted}
    for precision in auto_order(cpu, task):
        if precision not in present:
            continue
        for backend in (CPU, OPENVINO):
            if runs_on(precision, backend) and usable.get(backend, backend == CPU):
                return backend
    return CPU


def triton_device_backend(device: str) -> str:
    """The backend a Triton instance kind runs: Triton's onnxruntime backend on CPU or on GPU (CUDA)."""
    return CUDA if device == "gpu" else CPU


def why_not(precision: str, backend: str) -> str:
    return PRECISIONS[precision].why_not.get(backend, "") if precision in PRECISIONS else ""


def _label(backend: str) -> str:
    return {CPU: "the CPU provider", CUDA: "CUDA", OPENVINO: "OpenVINO"}.get(backend, backend)


def _user_name(backend: str) -> str:
    return next((k for k, v in BACKEND_NAMES.items() if v == backend), backend)


def _default_for(backend: str) -> str:
    return next(iter(PREFERENCE.get(("fill-mask", backend), ("fp32",))))
