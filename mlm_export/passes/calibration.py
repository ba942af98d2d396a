"""Activation statistics on calibration rows, for int8 recipes that choose layers by how they behave.

Dynamic int8 gives an activation tensor one scale, so a tensor whose largest channel dwarfs its typical
one loses most of its levels. `heaviest_tails` ranks MatMuls by that ratio (the largest per-channel
max |x| over the median one), measured on the artifact's realistic probe rows, never on the gate's
outcome: the gate then judges the recipe like any other.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..progress import stage
from ..runtime.graph import control_feeds
from .graph_file import save_graph

DATA_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def heaviest_tails(model: Any, nodes: Sequence[Any], rows: Sequence[Any], work: Path, external: bool,
                   count: int) -> list[str]:
    """Names of the `count` nodes in `nodes` whose first input has the heaviest-tailed channel ranges."""
    if count >= len(nodes):
        return [node.name for node in nodes]
    if not rows:
        raise ExportError("choosing layers by their activations needs calibration rows, and none were given")
    ranges = activation_ranges(model, sorted({node.input[0] for node in nodes}), rows, work, external)
    empty = np.zeros(1)  # a tensor no calibration row reached (head rows, and no row had a mask): ranked last
    tail = {node.name: float(ranges.get(node.input[0], empty).max()
                             / max(float(np.median(ranges.get(node.input[0], empty))), 1e-12)) for node in nodes}
    return sorted(tail, key=lambda name: -tail[name])[:count]


def activation_ranges(model: Any, names: list[str], rows: Sequence[Any], work: Path,
                      external: bool) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of each tensor in `names`, over the real tokens of `rows`
    (single-row ProbeBatch objects), with the graph's outputs extended to those tensors."""
    import onnx
    from onnx import helper

    from ..runtime.backends import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    # in memory below protobuf's 2 GB limit; above it, a file of our own beside the output
    scratch = Path(tempfile.mkdtemp(prefix=".calibration-", dir=work)) if external else None
    try:
        if scratch is None:
            session = create_session(probe.SerializeToString(), "cpu")
        else:
            save_graph(probe, scratch / "calibration.onnx", external)
            session = create_session(str(scratch / "calibration.onnx"), "cpu")
        del probe
        graph_inputs = [i.name for i in session.get_inputs()]
        data = [n for n in graph_inputs if n in DATA_INPUTS]
        ranges: dict[str, np.ndarray] = {}
        with stage(f"measuring activation ranges on {len(rows)} calibration rows", len(rows), "row") as advance:
            for row in rows:
                feeds = row.feeds(data) | control_feeds(graph_inputs, 1)
                real = row.attention_mask.reshape(-1).astype(bool)
                for name, value in zip(names, session.run(names, feeds)):
                    flat = value.reshape(-1, value.shape[-1])
                    if len(flat) == len(real):
                        flat = flat[real]
                    # else a tensor of the head's rows only (passes.head_rows), all real tokens; none in a row
                    # without a mask
                    if not len(flat):
                        continue
                    per_channel = np.abs(flat).max(axis=0)
                    ranges[name] = np.maximum(ranges[name], per_channel) if name in ranges else per_channel
                advance(1)
        return ranges
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
