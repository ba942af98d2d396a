"""The ONNX Runtime backend: execution providers resolved, honoured or refused, and sessions opened.

A CUDA request that ends on the CPU is an error, never a silent fallback. ONNX Runtime's
`InferenceSession` already has the `backends.Session` interface.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import warnings
from typing import Any
from collections.abc import Sequence

from ..errors import ProviderError
from ..variants import CPU, CUDA, OPENVINO
from .threads import check_threads, default_threads

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


def ort_providers(spec: str | Sequence[str]) -> list[str]:
    """Translate "auto" | "cpu" | "cuda" | explicit list into ONNX Runtime provider names."""
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


@functools.cache
def _preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of the `nvidia-*` wheels before the first CUDA session.

    onnxruntime-gpu from PyPI (CUDA 12 and 13 builds) finds them only where torch was imported first or
    LD_LIBRARY_PATH names them; `preload_dlls` (onnxruntime 1.21+) loads them from site-packages. Where it
    is missing or finds nothing, the session itself then reports what is missing (a ProviderError below)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints what it could not find; the session says why
            preload()
    except Exception:  # noqa: BLE001 - a best effort: the session creation decides
        pass


def open_ort_session(model: str | bytes, spec: str | Sequence[str] = "auto", threads: int | None = None) -> Any:
    """An InferenceSession whose primary provider is the one asked for, or a ProviderError.

    `model` is a path, or the graph's bytes.
    """
    threads = default_threads() if threads is None else threads
    check_threads(threads)
    providers = ort_providers(spec)
    ort = _ort()
    if CUDA in providers:
        _preload_cuda_libraries(ort)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:
        if providers[0] == CUDA and isinstance(spec, str) and spec.lower() == "auto":
            return open_ort_session(model, "cpu", threads)  # auto: no usable GPU is a CPU machine
        what = model if isinstance(model, str) else f"a {len(model)}-byte graph"
        raise ProviderError(f"could not create an ONNX Runtime session for {what} with "
                            f"{providers}: {exc}" + _clash_hint()) from exc
    active = session.get_providers()
    if active[0] != providers[0]:
        if isinstance(spec, str) and spec.lower() == "auto":
            return session if active[0] == CPU else open_ort_session(model, "cpu", threads)
        raise ProviderError(f"{providers[0]} was requested but ONNX Runtime fell back to "
                            f"{active[0]} (no usable device or missing CUDA libraries)." + _clash_hint())
    return session
