"""The sparse task's graph (SPLADE): the encoder, then the MLM head over chunks of positions inside an
ONNX `Loop`, reduced as it goes, so the `[batch, sequence, vocabulary]` logits never exist whole.

Per text, SPLADE is `pool over attended positions of log(1 + relu(logits))`, CLS and SEP included and
padding excluded, as sentence-transformers' `SpladePooling` computes it. Each iteration of the loop
runs the head on `max(1, chunk_tokens // batch)` positions of every row and folds them into a running
`[batch, vocabulary]` state:

- `max` (SPLADE v2, ++, the default): log1p and relu are monotonic, so the running state is the max
  of the raw logits (padding counted as 0, which relu clamps anyway) and `log1p(relu(.))` is applied
  once at the end: exact, and the per-chunk work is one reduction;
- `sum` (SPLADE v1): the chunk's `log1p(relu(logits))`, padding zeroed, summed into the state.

Memory then grows with `chunk_tokens x vocabulary`, not with `batch x sequence x vocabulary` (a
batch of 32 x 256 tokens of a 30522-token vocabulary holds 1 GB of logits; a chunk of 512 holds 62 MB).

The two halves arrive as separate graphs, each already fused and converted to its precision by the
ordinary passes (a plain graph is what they handle); this pass only joins them. Initializers the
head shares with the encoder (the tied decoder is the word embedding table) are stored once: the
loop body reads the outer graph's copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .graph_file import load_graph, save_graph, uses_external_data

SPARSE_OUTPUT = "weights"
POOLINGS = ("max", "sum")
CHUNK_TOKENS = 512  # positions x rows the head runs on at once: 62 MB of logits for a 30522-token vocabulary
_PREFIX = "sparse_head/"


def assemble_sparse(encoder: Path, head: Path, dst: Path, *, pooling: str, chunk_tokens: int = CHUNK_TOKENS,
                    hidden_output: str = "hidden_states", head_input: str = "rows",
                    head_output: str = "logits") -> None:
    """Write the sparse graph of `encoder` (tokens -> `hidden_output` [B, S, H]) and `head` (`head_input`
    [N, H] -> `head_output` [N, V]) to `dst`: tokens -> `weights` [B, V]."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    if pooling not in POOLINGS:
        raise ExportError(f"sparse pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if chunk_tokens < 1:
        raise ExportError(f"chunk_tokens must be positive, got {chunk_tokens}")
    enc, hd = load_graph(encoder), load_graph(head)
    if [o.name for o in enc.graph.output] != [hidden_output] or [i.name for i in hd.graph.input] != [head_input]:
        raise ExportError(f"{encoder.name} must give only {hidden_output!r} and {head.name} take only {head_input!r}")
    graph = enc.graph
    shared = _initializer_index(graph)
    rename: dict[str, str] = {}
    for init in hd.graph.initializer:
        key = _key(init)
        if key in shared:
            rename[init.name] = shared[key]  # the tied decoder: the encoder's word embedding table
        else:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename[init.name] = _PREFIX + init.name
            graph.initializer.append(copy)
            shared[key] = copy.name
    rename |= {head_input: "chunk/rows", head_output: "chunk/logits"}

    def renamed(name: str) -> str:
        return rename.get(name, name if not name else _PREFIX + name)

    body_nodes = [
        h.make_node("Mul", ["chunk/iteration", "sparse/chunk"], ["chunk/start"]),
        h.make_node("Add", ["chunk/start", "sparse/chunk"], ["chunk/end"]),
        h.make_node("Unsqueeze", ["chunk/start", "sparse/axis0"], ["chunk/start_1d"]),
        h.make_node("Unsqueeze", ["chunk/end", "sparse/axis0"], ["chunk/end_1d"]),
        h.make_node("Slice", [hidden_output, "chunk/start_1d", "chunk/end_1d", "sparse/axis1"], ["chunk/hidden"]),
        h.make_node("Slice", ["sparse/attended", "chunk/start_1d", "chunk/end_1d", "sparse/axis1"], ["chunk/attended"]),
        h.make_node("Shape", ["chunk/hidden"], ["chunk/shape"]),
        h.make_node("Slice", ["chunk/shape", "sparse/axis0", "sparse/two", "sparse/axis0"], ["chunk/bs"]),
        h.make_node("Reshape", ["chunk/hidden", "sparse/rows_shape"], ["chunk/rows"]),
    ]
    for node in _topological(hd.graph):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = _PREFIX + (node.name or node.output[0])
        del copy.input[:], copy.output[:]
        copy.input.extend(renamed(name) for name in node.input)
        copy.output.extend(renamed(name) for name in node.output)
        body_nodes.append(copy)
    body_nodes += [
        h.make_node("Concat", ["chunk/bs", "sparse/vocab"], ["chunk/logits_shape"], axis=0),
        h.make_node("Reshape", ["chunk/logits", "chunk/logits_shape"], ["chunk/logits_3d"]),
    ]
    if pooling == "max":  # padding as 0: relu clamps the final state at 0 anyway
        body_nodes += [
            h.make_node("Where", ["chunk/attended", "chunk/logits_3d", "sparse/zero"], ["chunk/kept"]),
            _reduce_max(["chunk/kept"], "chunk/pooled", _opset(enc)),
            h.make_node("Max", ["chunk/state_in", "chunk/pooled"], ["chunk/state_out"]),
        ]
    else:
        body_nodes += [
            h.make_node("Relu", ["chunk/logits_3d"], ["chunk/relu"]),
            h.make_node("Add", ["chunk/relu", "sparse/one"], ["chunk/1p"]),
            h.make_node("Log", ["chunk/1p"], ["chunk/weights"]),
            h.make_node("Where", ["chunk/attended", "chunk/weights", "sparse/zero"], ["chunk/kept"]),
            h.make_node("ReduceSum", ["chunk/kept", "sparse/axis1"], ["chunk/pooled"], keepdims=0),
            h.make_node("Add", ["chunk/state_in", "chunk/pooled"], ["chunk/state_out"]),
        ]
    body_nodes.append(h.make_node("Identity", ["chunk/condition_in"], ["chunk/condition_out"]))
    body = h.make_graph(
        body_nodes, "sparse_chunk",
        [h.make_tensor_value_info("chunk/iteration", T.INT64, []),
         h.make_tensor_value_info("chunk/condition_in", T.BOOL, []),
         h.make_tensor_value_info("chunk/state_in", T.FLOAT, None)],
        [h.make_tensor_value_info("chunk/condition_out", T.BOOL, []),
         h.make_tensor_value_info("chunk/state_out", T.FLOAT, None)])
    vocab = _vocab_size(hd)
    hidden_size = _hidden_size(hd, head_input)
    graph.initializer.extend([
        h.make_tensor("sparse/axis0", T.INT64, [1], [0]), h.make_tensor("sparse/axis1", T.INT64, [1], [1]),
        h.make_tensor("sparse/two", T.INT64, [1], [2]), h.make_tensor("sparse/one_i", T.INT64, [], [1]),
        h.make_tensor("sparse/tokens", T.INT64, [], [chunk_tokens]),
        h.make_tensor("sparse/vocab", T.INT64, [1], [vocab]),
        h.make_tensor("sparse/rows_shape", T.INT64, [2], [-1, hidden_size]),
        h.make_tensor("sparse/zero", T.FLOAT, [], [0.0]), h.make_tensor("sparse/one", T.FLOAT, [], [1.0]),
        h.make_tensor("sparse/true", T.BOOL, [], [True]),
    ])
    graph.node.extend([
        h.make_node("Shape", ["input_ids"], ["sparse/shape"]),
        h.make_node("Gather", ["sparse/shape", "sparse/axis0"], ["sparse/batch_1d"]),
        h.make_node("Gather", ["sparse/shape", "sparse/axis1"], ["sparse/sequence_1d"]),
        h.make_node("Squeeze", ["sparse/batch_1d"], ["sparse/batch"]),
        h.make_node("Squeeze", ["sparse/sequence_1d"], ["sparse/sequence"]),
        # positions per chunk: chunk_tokens rows of the head at most, and at least one position (an empty
        # batch divides by one: it has no chunks to run)
        h.make_node("Max", ["sparse/batch", "sparse/one_i"], ["sparse/batch_1"]),
        h.make_node("Div", ["sparse/tokens", "sparse/batch_1"], ["sparse/chunk_raw"]),
        h.make_node("Max", ["sparse/chunk_raw", "sparse/one_i"], ["sparse/chunk"]),
        h.make_node("Add", ["sparse/sequence", "sparse/chunk"], ["sparse/round_up"]),
        h.make_node("Sub", ["sparse/round_up", "sparse/one_i"], ["sparse/round_up_1"]),
        h.make_node("Div", ["sparse/round_up_1", "sparse/chunk"], ["sparse/chunks"]),
        h.make_node("Cast", ["attention_mask"], ["sparse/attended_2d"], to=T.BOOL),
        h.make_node("Unsqueeze", ["sparse/attended_2d", "sparse/two"], ["sparse/attended"]),
        h.make_node("Concat", ["sparse/batch_1d", "sparse/vocab"], ["sparse/state_shape"], axis=0),
        h.make_node("ConstantOfShape", ["sparse/state_shape"], ["sparse/state_0"],
                    value=h.make_tensor("zero", T.FLOAT, [1], [0.0])),
        h.make_node("Loop", ["sparse/chunks", "sparse/true", "sparse/state_0"], ["sparse/state"], body=body,
                    name="sparse/chunks_loop"),
    ])
    if pooling == "max":
        graph.node.extend([h.make_node("Relu", ["sparse/state"], ["sparse/relu"]),
                           h.make_node("Add", ["sparse/relu", "sparse/one"], ["sparse/1p"]),
                           h.make_node("Log", ["sparse/1p"], [SPARSE_OUTPUT])])
    else:
        graph.node.append(h.make_node("Identity", ["sparse/state"], [SPARSE_OUTPUT]))
    del graph.output[:]
    graph.output.append(h.make_tensor_value_info(SPARSE_OUTPUT, T.FLOAT, ["batch_size", vocab]))
    graph.name = "sparse"
    _merge_opsets(enc, hd)
    onnx.checker.check_model(enc)
    save_graph(enc, dst, uses_external_data(encoder))


def _topological(graph: Any) -> list[Any]:
    """The graph's nodes in an order where each follows its inputs' producers (the fp16 converter appends its
    Casts at the end; ONNX Runtime sorts a graph itself, the checker of a loop body does not)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ExportError("the MLM head graph has a cycle or reads a tensor nothing computes")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in progress]
    return ordered


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _reduce_max(inputs: list[str], output: str, opset: int) -> Any:
    """ReduceMax over axis 1: `axes` is an attribute before opset 18 and an input from it on."""
    from onnx import helper as h

    if opset >= 18:
        return h.make_node("ReduceMax", inputs + ["sparse/axis1"], [output], keepdims=0)
    return h.make_node("ReduceMax", inputs, [output], axes=[1], keepdims=0)


def _key(init: Any) -> tuple[Any, ...]:
    from onnx import numpy_helper

    data = init.raw_data or numpy_helper.to_array(init).tobytes()
    return init.data_type, tuple(init.dims), hashlib.sha256(data).digest()


def _initializer_index(graph: Any) -> dict[tuple[Any, ...], str]:
    index: dict[tuple[Any, ...], str] = {}
    for init in graph.initializer:
        index.setdefault(_key(init), init.name)
    return index


def _vocab_size(head: Any) -> int:
    dims = head.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ExportError("the MLM head's logits have no fixed vocabulary size")
    return int(dims[1].dim_value)


def _hidden_size(head: Any, name: str) -> int:
    dims = next(i for i in head.graph.input if i.name == name).type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ExportError("the MLM head's input has no fixed hidden size")
    return int(dims[1].dim_value)


def _merge_opsets(target: Any, other: Any) -> None:
    """The body's ops need their domains imported by the model (the head's fused or quantized ops)."""
    have = {o.domain: o for o in target.opset_import}
    for opset in other.opset_import:
        if opset.domain not in have:
            target.opset_import.append(opset)
        elif opset.version > have[opset.domain].version:
            have[opset.domain].version = opset.version
