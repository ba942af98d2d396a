"""Execution-provider resolution shared by the predictor and `verify`; torch-free.

A CUDA request that ends on the CPU is an error, never a silent fallback. `"openvino"` is not an ONNX
Runtime provider: it opens the graph with OpenVINO (`runtime.openvino`), for the bf16 variant.
"""

from __future__ import annotations

import importlib.metadata
import numbers
import os
import warnings
from typing import Any
from collections.abc import Sequence

from ..errors import InputError, ProviderError
from .openvino import OPENVINO, OpenVINOSession, openvino_module

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_WHEELS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'mlm-export[gpu]' "
        "(or 'mlm-export[cpu]' for CPU only)")


def installed_wheels() -> list[str]:
    """Every onnxruntime distribution installed; more than one means they overwrote each other."""
    found = []
    for name in _WHEELS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ProviderError("onnxruntime is not installed: pip install 'mlm-export[cpu]' "
                            "(CPU) or 'mlm-export[gpu]' (CUDA)") from exc
    return onnxruntime


def _clash_hint() -> str:
    wheels = installed_wheels()
    if len(wheels) > 1:
        return (f" Several onnxruntime wheels are installed ({', '.join(wheels)}); they install the "
                f"same module and the last one wins. Fix: {_FIX}")
    return ""


THREADS_PER_CPU = 4  # the most intra-op threads accepted per logical CPU


def usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, where the kernel enforces one by affinity)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    return THREADS_PER_CPU * usable_cpus()


THREADS_ENV = "MLM_EXPORT_THREADS"


def default_threads() -> int | None:
    """`MLM_EXPORT_THREADS` when set, else None (ONNX Runtime's own choice, one thread per physical core):
    the cap for processes that share a machine, such as test workers or several services on one host."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise InputError(f"{THREADS_ENV} must be a whole number of threads, got {value!r}") from None
    try:
        check_threads(threads)
    except InputError as exc:
        raise InputError(f"{THREADS_ENV}: {exc}") from None
    return threads


def check_threads(threads: object) -> None:
    """ONNX Runtime starts one OS thread per intra-op thread: a huge count exhausts the machine."""
    if threads is None:
        return
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool):
        raise InputError(f"threads must be an integer or None, got {threads!r}")
    cpus = usable_cpus()
    limit = THREADS_PER_CPU * cpus
    if not 1 <= threads <= limit:
        why = ": more threads than cores only adds contention" if threads > limit else ""
        raise InputError(f"threads must be between 1 and {limit} ({THREADS_PER_CPU} x the {cpus} CPUs "
                         f"here), got {threads}{why}")


def requested_providers(spec: str | Sequence[str]) -> list[str]:
    """Translate "auto" | "cpu" | "cuda" | "openvino" | explicit list into provider names."""
    if isinstance(spec, str) and spec.lower() == "openvino":
        openvino_module()  # installed, or a ProviderError that says how
        return [OPENVINO]
    ort = _ort()
    available = ort.get_available_providers()
    if isinstance(spec, str):
        key = spec.lower()
        if key == "cpu":
            return [CPU]
        if key == "cuda":
            if CUDA not in available:
                raise ProviderError("providers='cuda' was requested but this onnxruntime has no "
                                    f"CUDA provider (available: {', '.join(available)}). Install "
                                    "'mlm-export[gpu]'." + _clash_hint())
            return [CUDA, CPU]
        if key == "auto":
            if CUDA not in available and "onnxruntime-gpu" in installed_wheels():
                warnings.warn("onnxruntime-gpu is installed but CUDA is unavailable; using the CPU."
                              + _clash_hint(), RuntimeWarning, stacklevel=3)
            return [CUDA, CPU] if CUDA in available else [CPU]
        raise ProviderError(f"unknown providers value {spec!r}: use 'auto', 'cpu', 'cuda', 'openvino' or a "
                            "list of ONNX Runtime provider names")
    if not isinstance(spec, Sequence) or not all(isinstance(p, str) for p in spec):
        raise ProviderError(f"providers must be 'auto', 'cpu', 'cuda', 'openvino' or a list of ONNX Runtime "
                            f"provider names, got {spec!r}")
    providers = list(spec)
    unknown = [p for p in providers if p not in available]
    if not providers or unknown:
        hint = " OpenVINO is not an ONNX Runtime provider: pass providers='openvino'." if OPENVINO in unknown else ""
        raise ProviderError(f"provider(s) {unknown or providers} not available in this onnxruntime "
                            f"(available: {', '.join(available)}).{hint}" + _clash_hint())
    return providers


def create_session(model: str | bytes, spec: str | Sequence[str] = "auto", threads: int | None = None,
                   head_input: str | None = None) -> Any:
    """An InferenceSession whose primary provider is the one asked for, or a ProviderError.

    `model` is a path, or the graph's bytes (the predictor passes the bytes it hash-checked).
    `head_input` matters only to OpenVINO: where the float32 head begins (`OpenVINOSession`).
    """
    threads = default_threads() if threads is None else threads
    check_threads(threads)
    providers = requested_providers(spec)
    if providers == [OPENVINO]:
        return OpenVINOSession(model, head_input, threads)
    ort = _ort()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:
        if providers[0] == CUDA and isinstance(spec, str) and spec.lower() == "auto":
            return create_session(model, "cpu", threads)  # auto: no usable GPU is a CPU machine
        what = model if isinstance(model, str) else f"a {len(model)}-byte graph"
        raise ProviderError(f"could not create an ONNX Runtime session for {what} with "
                            f"{providers}: {exc}" + _clash_hint()) from exc
    active = session.get_providers()
    if active[0] != providers[0]:
        if isinstance(spec, str) and spec.lower() == "auto":
            return session if active[0] == CPU else create_session(model, "cpu", threads)
        raise ProviderError(f"{providers[0]} was requested but ONNX Runtime fell back to "
                            f"{active[0]} (no usable device or missing CUDA libraries)." + _clash_hint())
    return session
