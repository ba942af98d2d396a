"""The bf16 variant's graph: the unfused fill-mask graph in standard ONNX ops, made for OpenVINO.

Three things make it OpenVINO's rather than ONNX Runtime's: where the MLM head begins (`head_input_of`:
OpenVINO runs the encoder in bf16 and the head in float32), a rewrite of the reductions OpenVINO's
ONNX reader gets wrong (`rewrite_for_openvino`: openvino 2026.4 reduces `ReduceLogSumExp` and
`ReduceLogSum` of opset < 18 over every axis, ignoring `axes`, which mis-normalized every probability
of a batch with several masks), and a check that OpenVINO in float32 reads the graph as ONNX Runtime
does (`check_openvino_reads`), so that a misread op is an export error, not a gate failure blamed on
bf16, or a wrong output the gate does not look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..runtime.graph import control_feeds
from ..runtime.openvino import OpenVINOSession
from ..runtime.backends import create_session
from ..runtime.threads import default_threads
from .graph_file import load_graph, save_graph, uses_external_data

_LOG_REDUCTIONS = ("ReduceLogSumExp", "ReduceLogSum")
READ_RTOL, READ_ATOL = 1e-3, 1e-4  # float32 on two runtimes: summation order, not meaning


def write_portable(raw: Path, path: Path, head: bool = True) -> str | None:
    """`raw` (an unfused graph) for OpenVINO at `path`; returns where its MLM head begins (the fill-mask
    graph's; None with `head=False`, for the encoder part of the sparse and embed tasks)."""
    model = load_graph(raw)
    rewrite_for_openvino(model)
    _drop_unused_initializers(model.graph)
    save_graph(model, path, uses_external_data(raw))
    return head_input_of(model.graph, path.name) if head else None


def head_input_of(graph: Any, name: str) -> str:
    """The tensor where the MLM head begins: the masked rows' hidden states.

    The fill-mask form feeds its head 2-D rows (`hidden[batch_index, position]`, build/trace.py), so the
    head's first Linear is the graph's first Gemm (the encoder's 3-D Linears trace to MatMul + Add).
    """
    first = next((node for node in graph.node if node.op_type == "Gemm"), None)
    if first is None:
        raise ExportError(f"{name} has no Gemm, so where its MLM head begins is unknown: this family's head "
                          "is not a Linear on the masked rows; export it without --bf16")
    return str(first.input[0])


def rewrite_for_openvino(model: Any) -> int:
    """Replace each `ReduceLogSumExp` / `ReduceLogSum` that takes `axes` as an attribute with the same
    reduction in ops OpenVINO reads correctly (max-shifted, as ONNX Runtime computes it); returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    rewritten = 0
    for node in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in _LOG_REDUCTIONS or "axes" not in attrs:
            continue
        axes, keep = list(attrs["axes"]), int(attrs.get("keepdims", 1))
        x, y = node.input[0], node.output[0]
        tag = node.name or y
        axes_name = f"{tag}/axes"
        graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name))
        if node.op_type == "ReduceLogSum":
            nodes = [helper.make_node("ReduceSum", [x, axes_name], [f"{tag}/sum"], keepdims=keep),
                     helper.make_node("Log", [f"{tag}/sum"], [y])]
        else:
            nodes = [helper.make_node("ReduceMax", [x], [f"{tag}/max"], axes=axes, keepdims=1),
                     helper.make_node("Sub", [x, f"{tag}/max"], [f"{tag}/shifted"]),
                     helper.make_node("Exp", [f"{tag}/shifted"], [f"{tag}/exp"]),
                     helper.make_node("ReduceSum", [f"{tag}/exp", axes_name], [f"{tag}/sum"], keepdims=keep),
                     helper.make_node("Log", [f"{tag}/sum"], [f"{tag}/log"])]
            if not keep:
                nodes.append(helper.make_node("ReduceMax", [x], [f"{tag}/max_out"], axes=axes, keepdims=0))
            nodes.append(helper.make_node("Add", [f"{tag}/log", f"{tag}/max_out" if not keep else f"{tag}/max"], [y]))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(nodes):
            new.name = f"{tag}/{new.op_type}_{offset}"
            graph.node.insert(index + offset, new)
        rewritten += 1
    return rewritten


def _drop_unused_initializers(graph: Any) -> None:
    """The traced graph keeps constants no node reads (ONNX Runtime warns about them on every load); fusion
    drops them from the other variants."""
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and not set(n.output) & used]:
        graph.node.remove(node)
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def check_openvino_reads(path: Path, head_input: str | None, input_names: tuple[str, ...], batches: list[Any]) -> None:
    """OpenVINO in float32 must give every output ONNX Runtime gives on the same graph and feeds: the masks
    exactly, the float outputs to float32 rounding, and the same top-k ids except where two candidates'
    logits tie within that rounding (random-token probes of a wide vocabulary have near-ties)."""
    openvino = OpenVINOSession(str(path), head_input, threads=default_threads(), bf16=False)
    reference = create_session(str(path), "cpu")
    outputs = [port.name for port in reference.get_outputs()]
    for batch in batches:
        feeds = batch.feeds(n for n in input_names if n in ("input_ids", "attention_mask", "token_type_ids"))
        feeds |= control_feeds(input_names, 5, target_ids=np.array([[0, 1, 2]]), exclude_special=True)
        got = dict(zip(outputs, openvino.run(outputs, feeds)))
        want = dict(zip(outputs, reference.run(outputs, feeds)))
        for name in outputs:
            problem = _difference(name, got[name], want[name], want.get("logits"))
            if problem:
                raise ExportError(f"OpenVINO reads {path.name} differently from ONNX Runtime, in float32 on "
                                  f"{batch.label}: output {name!r}, {problem}. This OpenVINO misreads an op of "
                                  "the graph; export without --bf16, or with another openvino version")


def _difference(name: str, got: np.ndarray, want: np.ndarray, want_logits: np.ndarray | None) -> str | None:
    """Why `got` is not `want`, or None when it is (see `check_openvino_reads`)."""
    if got.shape != want.shape:
        return f"shape {got.shape} vs {want.shape}"
    if want.dtype.kind in "fc":
        if np.allclose(got, want, rtol=READ_RTOL, atol=READ_ATOL, equal_nan=True):
            return None
        return f"max difference {np.nanmax(np.abs(got.astype(np.float64) - want)):.3g}"
    differs = got != want
    if name == "token_ids" and want_logits is not None and want_logits.shape == want.shape:
        tied = np.abs(np.diff(want_logits, axis=1)) <= READ_ATOL + READ_RTOL * np.abs(want_logits[:, 1:])
        near = np.zeros_like(differs)
        near[:, :-1] |= tied
        near[:, 1:] |= tied
        near[:, -1] = True  # a tie with the first candidate left out; the logits check holds its value
        differs &= ~near
    return f"{int(differs.sum())} of {differs.size} values differ" if differs.any() else None
