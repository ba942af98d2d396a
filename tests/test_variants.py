"""The policy table (`mlm_export.variants`): which precision runs on which backend, the default variant,
what `providers="auto"` takes, and where verify judges each precision. Pure functions: no artifact needed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mlm_export import ProviderError
from mlm_export.variants import (
    AUTO_CPU_PRECISIONS,
    CPU,
    CUDA,
    OPENVINO,
    auto_backend,
    check_pairing,
    judged_on,
    preferred,
    runs_on,
)

TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class G:
    precision: str


FULL = {"fp32": G("fp32"), "fp16": G("fp16"), "int8": G("int8"), "bf16": G("bf16")}


def test_int8_never_on_cuda_and_bf16_only_on_openvino() -> None:
    assert runs_on("int8", CPU) and not runs_on("int8", CUDA) and not runs_on("int8", OPENVINO)
    assert runs_on("bf16", OPENVINO) and not runs_on("bf16", CPU) and not runs_on("bf16", CUDA)
    assert runs_on("fp16", CUDA) and runs_on("fp16", CPU) and runs_on("fp32", CUDA)


def test_another_onnxruntime_provider_runs_what_onnxruntime_runs() -> None:
    """TensorRT, DirectML, ROCm...: ONNX Runtime's graphs run there (as before the table), bf16 does not."""
    assert runs_on("fp32", TENSORRT) and runs_on("fp16", TENSORRT) and runs_on("int8", TENSORRT)
    assert not runs_on("bf16", TENSORRT)
    check_pairing("fp32", "fp32", TENSORRT, "art", FULL)  # no error


def test_default_variant_per_backend() -> None:
    assert preferred(FULL, CPU) == "int8" and preferred(FULL, CUDA) == "fp16" and preferred(FULL, OPENVINO) == "bf16"
    assert preferred({"fp32": G("fp32"), "fp16": G("fp16")}, CPU) == "fp32"
    # a slim copy with no preferred variant: one that runs there, never bf16 off OpenVINO
    assert preferred({"bf16": G("bf16"), "fp16": G("fp16")}, CPU) == "fp16"


@pytest.mark.parametrize("cpu", sorted(AUTO_CPU_PRECISIONS))
def test_auto_takes_openvino_only_where_it_is_usable_and_the_artifact_has_bf16(cpu: str) -> None:
    bf16_first = AUTO_CPU_PRECISIONS[cpu][0] == "bf16"
    assert auto_backend(FULL, None, None, cpu, {OPENVINO: True}) == (OPENVINO if bf16_first else CPU)
    assert auto_backend(FULL, None, None, cpu, {OPENVINO: False}) == CPU
    without_bf16 = {k: v for k, v in FULL.items() if k != "bf16"}
    assert auto_backend(without_bf16, None, None, cpu, {OPENVINO: True}) == CPU
    assert auto_backend(FULL, None, "int8", cpu, {OPENVINO: True}) == CPU  # a variant asked for decides
    assert auto_backend(FULL, None, "bf16", cpu, {OPENVINO: True}) == OPENVINO


def test_auto_runs_the_precision_measured_fastest_on_each_cpu_class() -> None:
    """AMX: bf16 on OpenVINO; AVX-512 BF16 without AMX (Zen 4): int8, else bf16 over fp32; others: int8."""
    assert auto_backend(FULL, None, None, "amx", {OPENVINO: True}) == OPENVINO
    assert auto_backend(FULL, None, None, "avx512_bf16", {OPENVINO: True}) == CPU
    assert auto_backend(FULL, None, None, "other", {OPENVINO: True}) == CPU
    no_int8 = {k: v for k, v in FULL.items() if k != "int8"}  # bf16 beats fp32 wherever it is usable
    assert auto_backend(no_int8, None, None, "avx512_bf16", {OPENVINO: True}) == OPENVINO
    assert auto_backend(no_int8, None, None, "amx", {OPENVINO: False}) == CPU


def test_auto_takes_the_gpu_only_for_an_artifact_with_a_variant_for_it() -> None:
    assert auto_backend(FULL, CUDA, None, "other", {OPENVINO: True}) == CUDA
    assert auto_backend({"int8": G("int8")}, CUDA, None, "other", {OPENVINO: False}) == CPU


def test_a_wrong_pairing_says_what_to_pass_instead() -> None:
    with pytest.raises(ProviderError, match="int8 variant is for the CPU provider.*variant='fp16'"):
        check_pairing("int8", "int8", CUDA, "art", FULL)
    with pytest.raises(ProviderError, match="providers='openvino'"):
        check_pairing("bf16", "bf16", CPU, "art", FULL)
    with pytest.raises(ProviderError, match="runs only the bf16 variant.*variant='bf16'"):
        check_pairing("fp32", "fp32", OPENVINO, "art", FULL)


def test_verify_judges_each_precision_where_it_runs() -> None:
    assert judged_on("int8", "cuda") == "cpu" and judged_on("bf16", "cpu") == "openvino"
    assert judged_on("fp16", "cuda") == "cuda" and judged_on("fp32", "auto") == "auto"
    assert judged_on("int8", "auto") == "cpu"
    assert judged_on("fp32", [TENSORRT, CPU]) == [TENSORRT, CPU] and judged_on("bf16", [CPU]) == "openvino"
