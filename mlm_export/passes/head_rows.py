"""Head-rows pass: the last layer's per-position tail runs only at the rows the MLM head reads.

The fill-mask graph gathers the encoder's output at the masked positions (and the `score_positions`)
before the head. Everything the last layer does after its attention (output projection, residual
sum, LayerNorm, the feed-forward block, the final LayerNorm) treats each position on its own, so
the gather can move up to where that tail begins: to the attention's output and the residual that
feeds the tail. The attention itself still sees every position (its keys and values need them);
only its context rows the head reads go on. For a masked copy per token (PLL, masked marginals)
that is one row in L, and about 9/12 of one layer's matrix work is skipped: AntiBERTy has 8
layers, bert-base 12.

The pass is structural and checks itself: the tail must be made of per-position ops, every tensor
it gathers must be `[batch, sequence, ...]` on a probe run, and the rewritten graph must answer as
the original does (float graphs: to rounding; int8: the same rows, since its dynamic activation
scales then see only the rows the head reads). A graph where any of this fails is left as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import stage

log = logging.getLogger("mlm_export")

# ops that compute each position from that position alone (given constant or scalar other operands)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Cast", "Identity", "Relu", "Erf", "Tanh", "Sigmoid", "Sqrt",
                "Neg", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "QuantizeLinear", "DequantizeLinear"}
_LAST_AXIS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
              "SkipSimplifiedLayerNormalization", "ReduceMean"}  # per position when they reduce the last axis
_MATMUL = {"MatMul", "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul", "FusedMatMul"}  # weight constant
# per-tensor activation scale: per position in structure; int8's scales then see the head's rows only
_WHOLE_TENSOR = {"DynamicQuantizeLinear"}
GATHER_NODES = ("/head_rows_flatten", "/head_rows_gather")  # name suffixes of the nodes this pass adds


@dataclass(frozen=True)
class HeadRows:
    """What the pass did to one graph: the tail's nodes now on the head's rows, and the tensors gathered."""

    nodes: int
    gathered: tuple[str, ...]

    @property
    def applied(self) -> bool:
        """Whether the graph was rewritten (else it is byte for byte as it was)."""
        return self.nodes > 0


def gather_head_rows(path: Path, mask_token_id: int, vocab_size: int, tolerance: float | None = 1e-3) -> HeadRows:
    """Rewrite the fill-mask graph at `path` in place so its last layer's tail runs on the head's rows.

    `tolerance`: how far (relative and absolute) the rewritten graph's float outputs may move from the
    original's on the probe runs; None (int8) asks only for the same head rows and finite values. Returns
    what was done; nothing when the pattern or a check fails (logged), the graph then unchanged.

    Only the graph's structure is loaded: its probe and rewritten copies are written beside it, so the weights
    of a graph with external data (over 2 GB) are read from their one file and never copied.
    """
    import onnx

    with stage(f"running the last layer's tail of {path.name} at the head's rows only"):
        model = onnx.load(str(path), load_external_data=False)
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        plan = _plan(rewritten)
        if plan is None:
            log.info("%s: the last layer's tail is not per-position ops here; left as it was", path.name)
            return HeadRows(0, ())
        feeds = _probe_feeds(model, mask_token_id, vocab_size)
        whole = _whole_frontier(path, model, plan, feeds)
        if whole is None:
            log.info("%s: a tensor the tail reads is not [batch, sequence, hidden]; left as it was", path.name)
            return HeadRows(0, ())
        _rewrite(rewritten, plan, whole)
        staged = path.with_name(f".{path.stem}.head-rows.onnx")
        try:
            onnx.save(rewritten, str(staged))
            problem = _compare(path, staged, feeds, tolerance)
            if problem:
                log.warning("%s: the head-rows rewrite changed the answers (%s); left as it was", path.name, problem)
                return HeadRows(0, ())
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        return HeadRows(len(plan.region), tuple(plan.frontier))


@dataclass
class _Plan:
    flatten: Any           # Flatten(hidden, axis=2): the rows the gather reads from
    gather: Any            # Gather(flattened, flat index): the head's rows
    hidden: str            # the encoder's output, [batch, sequence, hidden]
    region: list[Any]      # the tail's nodes, in graph order
    frontier: list[str]    # tensors the tail reads from outside it, each [batch, sequence, ...]


def _plan(model: Any) -> _Plan | None:
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constant = {i.name for i in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"}
    outputs = {o.name for o in graph.output}  # read outside the graph: a tail tensor that is one stays whole
    shapes = {i.name: tuple(i.dims) for i in graph.initializer} | {
        n.output[0]: tuple(n.attribute[0].t.dims) for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    flattens = [n for n in graph.node if n.op_type == "Flatten" and _attr(n, "axis", 1) == 2]
    for flatten in flattens:
        gathers = [c for c in consumers.get(flatten.output[0], [])
                   if c.op_type == "Gather" and _attr(c, "axis", 0) == 0]
        if len(gathers) != 1 or len(consumers[flatten.output[0]]) != 1:
            continue
        hidden = flatten.input[0]
        sinks = {id(c) for c in consumers.get(hidden, [])}
        if any(c.op_type not in ("Flatten", "Shape") for c in consumers.get(hidden, [])):
            continue
        region = _region(hidden, producer, consumers, constant, sinks, outputs)
        if not region:
            continue
        inside = {out for node in region for out in node.output}
        frontier = list(dict.fromkeys(name for node in region for name in node.input
                                      if name and name not in inside and name not in constant))
        if not frontier or any(not _operands_ok(node, inside, set(frontier), constant, shapes) for node in region):
            continue
        order = {id(node): i for i, node in enumerate(graph.node)}
        return _Plan(flatten, gathers[0], hidden, sorted(region, key=lambda n: order[id(n)]), frontier)
    return None


def _region(hidden: str, producer: dict[str, Any], consumers: dict[str, list[Any]], constant: set[str],
            sinks: set[int], outputs: set[str]) -> list[Any]:
    """The per-position nodes that lead to `hidden` and feed nothing else: a node joins once all its
    outputs' readers are in (so the layer input, also read by the attention, stays outside)."""
    member: set[int] = set(sinks)
    region: list[Any] = []
    pending = [producer[hidden]] if hidden in producer else []
    while pending:
        node = pending.pop()
        if id(node) in member or not _per_position(node) or outputs.intersection(node.output):
            continue
        readers = [c for out in node.output for c in consumers.get(out, [])]
        if not all(id(c) in member for c in readers):
            continue  # revisited when its last reader joins
        member.add(id(node))
        region.append(node)
        pending.extend(producer[name] for name in node.input if name in producer and name not in constant)
    return region


def _per_position(node: Any) -> bool:
    if node.domain not in ("", "com.microsoft"):
        return False
    if node.op_type in _ELEMENTWISE or node.op_type in _WHOLE_TENSOR:
        return True
    if node.op_type in _MATMUL:
        return not _attr(node, "transA", 0)
    if node.op_type == "ReduceMean":
        return list(_attr(node, "axes", [])) == [-1]
    if node.op_type in _LAST_AXIS:
        return bool(_attr(node, "axis", -1) == -1)
    return False


def _operands_ok(node: Any, inside: set[str], frontier: set[str], constant: set[str],
                 shapes: dict[str, tuple[int, ...]]) -> bool:
    """Rows in, rows out: a MatMul's weight is constant; any other constant operand (`shapes`: the constants'
    dims) is a scalar or one vector along the last axis (broadcasting it over rows is what it did over positions)."""
    for index, name in enumerate(node.input):
        if not name or name in inside or name in frontier:
            continue
        if name not in constant:
            return False
        if node.op_type in _MATMUL and index == 1:
            continue
        if name not in shapes or len(shapes[name]) > 1:  # unknown (a Constant of another kind): not taken
            return False
    return True


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _rewrite(model: Any, plan: _Plan, whole: str) -> None:
    """Flatten and gather each frontier tensor at the head's rows, make the tail read those rows and the
    head read the tail's output directly; `whole` (a frontier tensor of the hidden states' shape) stands in
    for the hidden states where their shape is read."""
    from onnx import helper

    graph = model.graph
    index = plan.gather.input[1]
    rows = {name: f"{name}/head_rows" for name in plan.frontier}
    region = {id(node) for node in plan.region}
    inside = {out for node in plan.region for out in node.output}
    new_nodes = []
    for name, gathered in rows.items():
        new_nodes += [helper.make_node("Flatten", [name], [f"{name}/flat"], axis=2, name=f"{name}{GATHER_NODES[0]}"),
                      helper.make_node("Gather", [f"{name}/flat", index], [gathered], axis=0,
                                       name=f"{name}{GATHER_NODES[1]}")]
    for node in graph.node:
        if id(node) in region:
            for i, name in enumerate(node.input):
                if name in rows:
                    node.input[i] = rows[name]
        elif node.op_type == "Shape" and node.input[0] == plan.hidden:
            node.input[0] = whole
        for i, name in enumerate(node.input):
            if name == plan.gather.output[0]:
                node.input[i] = plan.hidden
    kept = [n for n in graph.node if n is not plan.flatten and n is not plan.gather]
    ordered = _topological(new_nodes + kept, graph)
    del graph.node[:]
    graph.node.extend(ordered)
    stale = [v for v in graph.value_info if v.name in inside]  # their recorded shapes were [batch, sequence, ...]
    for info in stale:
        graph.value_info.remove(info)


def _topological(nodes: Sequence[Any], graph: Any) -> list[Any]:
    """`nodes` in an order where each runs after its inputs' producers (stable otherwise)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    remaining = list(nodes)
    ordered: list[Any] = []
    while remaining:
        progress = False
        left = []
        for node in remaining:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                left.append(node)
        if not progress:
            raise ValueError("the rewritten graph has a cycle or an input nothing produces")
        remaining = left
    return ordered


def _probe_feeds(model: Any, mask_token_id: int, vocab_size: int) -> list[dict[str, np.ndarray]]:
    """Two small runs: masks in two rows of different places, and one row with `score_positions` rows too."""
    from ..runtime.graph import control_feeds, token_feeds

    names = [i.name for i in model.graph.input]
    rng = np.random.default_rng(0)
    low = min(5, vocab_size - 1)
    runs = []
    for batch, length, extra in ((2, 9, False), (3, 6, True)):
        ids = rng.integers(low, vocab_size, (batch, length))
        ids[ids == mask_token_id] = low if low != mask_token_id else low + 1
        for row in range(batch):
            ids[row, 1 + row % (length - 2)] = mask_token_id
        positions = None
        if extra:
            positions = np.zeros((batch, length), dtype=bool)
            positions[0, -2] = positions[-1, 2] = True
        attention = np.ones_like(ids)
        attention[-1, -1] = 0  # a padded position
        runs.append(token_feeds(names, ids, attention) | control_feeds(names, 3, np.array([[low, low + 1]]),
                                                                      score_positions=positions))
    return runs


def _session(path: Path) -> Any:
    from ..runtime.backends import create_session

    return create_session(str(path), "cpu", threads=1)


def _whole_frontier(path: Path, model: Any, plan: _Plan, feeds: list[dict[str, np.ndarray]]) -> str | None:
    """A frontier tensor with the hidden states' shape on every probe run, provided every frontier tensor is
    `[batch, sequence, features]` there; else None."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [*plan.frontier, plan.hidden]
    for name in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))  # typed by inference: float or float16
    candidates = set(plan.frontier)
    staged = path.with_name(f".{path.stem}.head-rows-probe.onnx")
    try:
        onnx.save(probe, str(staged))
        session = _session(staged)
        for feed in feeds:
            batch, length = feed["input_ids"].shape
            *values, hidden = session.run(names, feed)
            if any(v.ndim != 3 or v.shape[:2] != (batch, length) for v in values):
                return None
            candidates &= {name for name, v in zip(plan.frontier, values) if v.shape == hidden.shape}
    except Exception as exc:  # noqa: BLE001 - any failure means: leave the graph alone
        log.info("head-rows probe failed: %s", exc)
        return None
    finally:
        staged.unlink(missing_ok=True)
    return next((name for name in plan.frontier if name in candidates), None)


def _compare(before: Path, after: Path, feeds: list[dict[str, np.ndarray]], tolerance: float | None) -> str | None:
    try:
        old, new = _session(before), _session(after)
        names = [o.name for o in old.get_outputs()]
        for feed in feeds:
            for name, a, b in zip(names, old.run(names, feed), new.run(names, feed)):
                if a.shape != b.shape:
                    return f"{name} has shape {b.shape}, not {a.shape}"
                if name in ("mask_batch_index", "mask_position"):
                    if not np.array_equal(a, b):
                        return f"{name} differs"
                elif a.dtype.kind == "f":
                    if not np.isfinite(b).all():
                        return f"{name} is not finite"
                    if tolerance is not None and not np.allclose(a, b, rtol=tolerance, atol=tolerance):
                        return f"{name} differs by {float(np.abs(a - b).max()):.2e}"
    except Exception as exc:  # noqa: BLE001 - any failure means: leave the graph alone
        return f"the rewritten graph failed: {exc}"
    return None
