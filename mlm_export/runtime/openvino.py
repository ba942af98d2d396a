"""The OpenVINO backend: a `backends.Session` for the bf16 variant (`providers="openvino"`); torch-free.

It runs the `bf16` variant: the unfused fill-mask graph (standard ONNX ops only; the fused graphs hold
ONNX Runtime's contrib ops). The graph is cut in memory where the MLM head begins (the manifest's
`head_input`): OpenVINO compiles the encoder with its bf16 precision hint and the head in float32.
bf16 logits (8 bits of mantissa) reorder near-tied tokens of a wide vocabulary, which fails the gate
when the head runs in bf16; the encoder in bf16 passes it. On a CPU without bf16 (neither AVX-512
BF16 nor AMX) the encoder runs in float32 as well, with a warning.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError, ProviderError
from ..variants import OPENVINO
from ..variants import OPENVINO_INSTALL_HINT as INSTALL_HINT


def openvino_module() -> Any:
    """The `openvino` package, or a ProviderError that says why it cannot be used and how to fix it."""
    try:
        import openvino
    except Exception as exc:  # not installed, or installed and broken (a missing shared library)
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "openvino"
        why = "is not installed" if missing else f"cannot be imported ({type(exc).__name__}: {_first_line(exc)})"
        raise ProviderError(f"the bf16 variant runs on OpenVINO, which {why}: {INSTALL_HINT}") from exc
    return openvino


def openvino_usable() -> bool:
    """Whether `import openvino` works: `providers="auto"` passes over one that is absent or broken."""
    try:
        openvino_module()
    except ProviderError:
        return False
    return True


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX-512 BF16 or AMX), not emulates f32."""
    ov = openvino_module()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class _Port:
    """What `session.get_inputs()` / `get_outputs()` items offer: a name."""

    name: str


class OpenVINOSession:
    """The graph as two compiled OpenVINO models, the encoder (bf16 hint) and the head (f32), with
    ONNX Runtime's `run(output_names, feeds)`; one pair of infer requests per thread."""

    def __init__(self, model: str | bytes, head_input: str | None, threads: int | None = None,
                 bf16: bool | None = None) -> None:
        """`bf16=None` computes the encoder in bf16 where the CPU can; False keeps all of it in float32."""
        ov = openvino_module()
        core = ov.Core()
        self.bf16 = cpu_has_bf16() if bf16 is None else bf16
        if bf16 is None and not self.bf16:
            warnings.warn("this CPU has no bf16 (neither AVX-512 BF16 nor AMX): OpenVINO runs the bf16 "
                          "variant in float32, which is slower than the int8 or fp32 variant on ONNX Runtime",
                          RuntimeWarning, stacklevel=3)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            graph = _read_model(core, model)
        except Exception as exc:  # OpenVINO raises RuntimeError for an op it does not know
            raise ProviderError(f"OpenVINO could not read the graph ({_first_line(exc)}); it runs only the "
                                "bf16 variant, which holds standard ONNX ops") from exc
        self._inputs = [port.get_any_name() for port in graph.inputs]
        self._outputs = [port.get_any_name() for port in graph.outputs]
        parts = [(graph, "bf16")] if head_input is None else _cut(ov, graph, head_input)
        try:
            self._parts = [core.compile_model(part, "CPU", config | {
                "INFERENCE_PRECISION_HINT": precision if self.bf16 else "f32"}) for part, precision in parts]
        except Exception as exc:
            raise ProviderError(f"OpenVINO could not compile the graph: {_first_line(exc)}") from exc
        self._part_inputs = [[port.get_any_name() for port in part.inputs] for part in self._parts]
        self._local = threading.local()

    @property
    def description(self) -> str:
        """How the graph runs, for reports: the precision each part's matrix products actually use."""
        chosen = ["bf16" if "bf16" in found else "f32" for found in self.matmul_precisions()]
        if len(chosen) == 1:
            return f"{OPENVINO} ({chosen[0]})"
        return f"{OPENVINO} ({chosen[0]} encoder, {chosen[1]} head)"

    def matmul_precisions(self) -> list[set[str]]:
        """Per part (encoder, head), the precisions OpenVINO's CPU plugin chose for its matrix products."""
        return [{str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in part.get_runtime_model().get_ops()
                 if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")}
                for part in self._parts]

    def get_providers(self) -> list[str]:
        return [OPENVINO]

    def get_inputs(self) -> list[_Port]:
        return [_Port(name) for name in self._inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(name) for name in self._outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = [part.create_infer_request() for part in self._parts]
        values = dict(feeds)
        for request, names in zip(requests, self._part_inputs):
            results = request.infer({name: values[name] for name in names})
            for port, value in results.items():  # under every name a tensor has: the head reads `head_input`
                copy = np.array(value, copy=True)  # a request's buffers are reused by its next call
                values |= dict.fromkeys(port.get_names(), copy)
        return [values[name] for name in (self._outputs if output_names is None else output_names)]


def _cut(ov: Any, graph: Any, head_input: str) -> list[tuple[Any, str]]:
    """The encoder (every output that does not need the head, and `head_input`) and the head (from a new
    parameter named `head_input`, plus the controls it reads), as two models."""
    source = next((out for op in graph.get_ordered_ops() for out in op.outputs() if head_input in out.get_names()),
                  None)
    rank = None if source is None else source.get_partial_shape().rank
    if source is None or rank is None or not rank.is_static or rank.get_length() != 2 \
            or source.get_node().get_type_name() == "Parameter":  # the head's rows are computed, never fed
        raise ArtifactError(f"the graph computes no 2-D tensor {head_input!r}, where its manifest says the MLM "
                            "head begins: re-export the artifact")
    from openvino import opset13

    start = opset13.parameter(source.get_partial_shape(), source.get_element_type(), name=head_input)
    start.output(0).set_names({head_input})
    consumers = list(source.get_target_inputs())
    if not any(c.get_node().get_type_name() == "MatMul" for c in consumers):  # the head's first Linear
        raise ArtifactError(f"{head_input!r}, where the manifest says the MLM head begins, feeds no matrix product: "
                            "it is not the input of the head's first Linear. Re-export the artifact")
    results = list(graph.get_results())
    starts_head = {consumer.get_node().get_name() for consumer in consumers}
    head = [r for r in results if _reaches(r, starts_head)]
    encoder = [r for r in results if not _reaches(r, starts_head)]
    for consumer in consumers:
        consumer.replace_source_output(start.output(0))
    encoder_model = ov.Model([*encoder, opset13.result(source)], _parameters([*encoder, source.get_node()]),
                             "encoder")
    head_model = ov.Model(head, _parameters(head), "head")
    return [(encoder_model, "bf16"), (head_model, "f32")]


def _walk_up(nodes: Iterable[Any]) -> Iterable[Any]:
    """Every node the given ones depend on, themselves included, each once."""
    seen: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        yield node
        stack += [port.get_source_output().get_node() for port in node.inputs()]


def _reaches(result: Any, names: set[str]) -> bool:
    return any(node.get_name() in names for node in _walk_up([result]))


def _parameters(nodes: Iterable[Any]) -> list[Any]:
    return [node for node in _walk_up(nodes) if node.get_type_name() == "Parameter"]


def _read_model(core: Any, model: str | bytes) -> Any:
    """By path where OpenVINO can (the predictor's /proc/self/fd/N of the hash-checked file has no suffix;
    openvino 2026.4 finds the ONNX reader by content): read as bytes, a bert-base graph peaked at 1.74 GB
    against 0.90 by path. An OpenVINO that picks its reader by suffix alone gets the bytes."""
    if isinstance(model, bytes) or str(model).endswith(".onnx"):
        return core.read_model(model)
    try:
        return core.read_model(model)
    except Exception:  # no frontend for a path without a suffix
        with open(model, "rb") as fh:
            return core.read_model(fh.read())


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line: OpenVINO's first line is often only where it was raised."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines)[:400] or type(exc).__name__
