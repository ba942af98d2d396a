"""Graph files, whole or with their weights beside them in ONNX external data.

Protobuf cannot serialize a message over 2 GB, so a graph whose weights are larger (xlm-roberta-large,
ESM-2 650M in fp32) keeps them in one `<graph file>.data` next to it. Every stage that rewrites a
graph keeps the form it was given: a graph with external data is saved with external data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_SUFFIX = ".data"
INLINE_BELOW = 1024  # tensors under 1 KB stay in the graph file


def data_path(path: Path) -> Path:
    """Where a graph's external data lives: one file beside it, named after it."""
    return path.with_name(path.name + DATA_SUFFIX)


def uses_external_data(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)


def load_graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def save_graph(model: Any, path: Path, external: bool) -> None:
    """Write `model` to `path`, its weights in `data_path(path)` when `external`."""
    import onnx

    data = data_path(path)
    for stale in (path, data):  # onnx appends to an existing data file
        if stale.exists():
            os.remove(stale)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=INLINE_BELOW)
    else:
        onnx.save_model(model, str(path))


def initializer_bytes(path: Path) -> int:
    """Bytes of weights in a graph, without the graph structure (which dominates tiny models)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path), load_external_data=False).graph  # the sizes are in the dims
    return sum(int(np.prod(t.dims)) * tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in graph.initializer)


def declare_inputs(graph_model: Any, names: Sequence[str]) -> None:
    """Declare the inputs `names` first and in order, even one the graph never reads (the embed graph of layer
    0, the embeddings, has no attention: torch and the optimizer drop its attention_mask), so that the graph
    takes what the manifest says it takes."""
    from onnx import TensorProto, helper

    present = {i.name: i for i in graph_model.graph.input}
    inputs = [present.get(name) or helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size",
                                                                                          "sequence_length"])
              for name in names]
    inputs += [i for i in graph_model.graph.input if i.name not in names]
    del graph_model.graph.input[:]
    graph_model.graph.input.extend(inputs)
