"""The backend seam: what the runtime needs of an opened graph (`Session`), and the one place a backend
is chosen from the user's `providers=`.

Backends: ONNX Runtime (`ort.py`: CPU, CUDA and any other execution provider; its `InferenceSession`
is a `Session` as it is) and OpenVINO (`openvino.py`, the bf16 variant). Which precision runs on which
backend is `mlm_export.variants`' table. Adding a backend is one module here plus its rows there.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..variants import CPU, CUDA, OPENVINO, auto_backend, runs_on
from .openvino import OpenVINOSession, cpu_has_bf16, openvino_module, openvino_usable
from .ort import ort_providers, open_ort_session
from .threads import check_threads, default_threads


class Port(Protocol):
    """A graph input or output, as a session lists it."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Session(Protocol):
    """One graph opened on a backend: ONNX Runtime's `run(output_names, feeds)` interface."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]:
        """The named outputs (all with None) for one set of feeds."""
        ...

    def get_inputs(self) -> Sequence[Port]: ...

    def get_outputs(self) -> Sequence[Port]: ...

    def get_providers(self) -> list[str]:
        """The backend the graph landed on first (what answers report)."""
        ...


def requested_providers(spec: str | Sequence[str]) -> list[str]:
    """Translate "auto" | "cpu" | "cuda" | "openvino" | a list of ONNX Runtime provider names into the
    backends asked for, first the primary one; an unusable request is a ProviderError that says how to fix it."""
    if isinstance(spec, str) and spec.lower() == "openvino":
        openvino_module()  # installed, or a ProviderError that says how
        return [OPENVINO]
    return ort_providers(spec)


def create_session(model: str | bytes, spec: str | Sequence[str] = "auto", threads: int | None = None,
                   head_input: str | None = None) -> Session:
    """A `Session` on the backend asked for, or a ProviderError.

    `model` is a path, or the graph's bytes (the predictor passes the bytes it hash-checked).
    `head_input` matters only to OpenVINO: where the float32 head begins (`OpenVINOSession`).
    """
    threads = default_threads() if threads is None else threads
    check_threads(threads)
    if requested_providers(spec) == [OPENVINO]:
        return OpenVINOSession(model, head_input, threads)
    session: Session = open_ort_session(model, spec, threads)
    return session


def choose_backend(variants: dict[str, Any], providers: str | Sequence[str], variant: str | None = None,
                   cpu_only: bool = False, task: str = "fill-mask") -> str:
    """The backend `providers` resolves to for an artifact with these `variants`: for "auto", the GPU where
    ONNX Runtime sees one (unless `cpu_only`: Ray's workers), else the backend of the fastest
    precision the artifact has for the CPU class and task (`variants.auto_order`; OpenVINO only where
    openvino imports and computes in bf16 here); else what was asked."""
    auto = isinstance(providers, str) and providers.lower() == "auto"
    primary = CPU if auto and cpu_only else requested_providers(providers)[0]
    if not auto:
        return primary
    wanted = [variants[variant]] if variant in variants else list(variants.values())
    openvino = any(runs_on(g.precision, OPENVINO) for g in wanted) and bf16_usable()
    return auto_backend(variants, primary if primary == CUDA else None, variant, cpu_class(), {OPENVINO: openvino},
                        task)


def providers_for(backend: str, providers: str | Sequence[str]) -> str | Sequence[str]:
    """The `providers` to open a session with once `backend` was chosen: auto may have chosen OpenVINO, or
    the CPU for an artifact with no variant for the GPU."""
    if isinstance(providers, str) and providers.lower() == "auto" and backend in (OPENVINO, CPU):
        return "openvino" if backend == OPENVINO else "cpu"
    return providers


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, as the kernel lists them (/proc/cpuinfo); none where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return frozenset(next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []))
    except OSError:
        return frozenset()


@functools.cache
def cpu_class() -> str:
    """The CPU class the auto rows are keyed by: "amx" (AMX bf16 tiles), "avx512_bf16" (AVX-512 BF16
    without AMX, e.g. AMD Zen 4), or "other"; read from the kernel's CPU flags."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "other"


def bf16_usable() -> bool:
    """Whether the bf16 variant runs here as built: OpenVINO imports and computes in bf16 on this CPU."""
    return openvino_usable() and cpu_has_bf16()
