"""The head-rows pass: the last layer's per-position tail runs at the head's rows only, answers unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from conftest import SPECIALS, WORDS, whole_fill_mask_graph
from mlm_export.passes.head_rows import GATHER_NODES, gather_head_rows
from mlm_export.runtime.graph import control_feeds, token_feeds

MASK = SPECIALS.index("[MASK]")


def _feeds(path: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return token_feeds(names, ids) | control_feeds(names, 4)


def _ids() -> np.ndarray:
    ids = np.array([[2] + list(np.random.default_rng(3).integers(5, len(SPECIALS + WORDS), 14)) + [3]] * 3)
    ids[0, 2] = ids[1, 9] = ids[2, 4] = ids[2, 12] = MASK  # 4 masks over 3 rows of 16 tokens
    return ids


def _rows_of(path: Path, tensor_of: str, feeds: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The shape of the output of the last node of type `tensor_of` before the head, on one run."""
    model = onnx.load(str(path))
    head = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Gemm")
    last = [n for n in model.graph.node[:head] if n.op_type == tensor_of][-1]
    model.graph.output.append(onnx.ValueInfoProto(name=last.output[0]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([last.output[0]], feeds)[0].shape


def test_every_fill_mask_variant_runs_its_last_ffn_at_the_masks_only(tiny_variants: Path) -> None:
    ids = _ids()
    for precision, ffn in (("fp32", "MatMul"), ("fp16", "MatMul"), ("int8", "MatMulInteger")):
        path = tiny_variants / f"fill_mask.{precision}.onnx"
        gathers = [n for n in onnx.load(str(path)).graph.node if n.name.endswith(GATHER_NODES[1])]
        assert len(gathers) == 2, precision  # the attention's context and the residual
        rows = _rows_of(path, ffn, _feeds(path, ids))
        assert rows[0] == 4 and len(rows) == 2, (precision, rows)  # [masks, hidden], not [3, 16, hidden]


def test_the_rewritten_graph_answers_as_the_whole_logits_graph(tiny_variants: Path) -> None:
    """At every mask, fp32's top-k logits are the top of the traced logits form's row (no pass touches that)."""
    ids = _ids()
    fill = ort.InferenceSession(str(tiny_variants / "fill_mask.fp32.onnx"), providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(str(tiny_variants / "model.onnx"), providers=["CPUExecutionProvider"])
    batch, position, top = fill.run(["mask_batch_index", "mask_position", "logits"],
                                    _feeds(tiny_variants / "fill_mask.fp32.onnx", ids))
    logits = whole.run(["logits"], _feeds(tiny_variants / "model.onnx", ids))[0]
    expected = -np.sort(-logits[batch, position], axis=-1)[:, : top.shape[1]]
    assert list(zip(batch, position)) == [(0, 2), (1, 9), (2, 4), (2, 12)]
    np.testing.assert_allclose(top, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def whole_graph(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's fill-mask graph as fusion writes it, before the pass."""
    return whole_fill_mask_graph(tiny_dir, tmp_path_factory.mktemp("whole") / "whole.onnx")


def test_the_pass_on_a_whole_graph_gathers_and_keeps_the_answers(whole_graph: Path, tmp_path: Path) -> None:
    """Run on the graph as fusion wrote it, the pass applies, and the answers agree to float32 rounding."""
    rows = tmp_path / "rows.onnx"
    shutil.copy(whole_graph, rows)
    done = gather_head_rows(rows, MASK, len(SPECIALS + WORDS))
    assert done.applied and len(done.gathered) == 2
    ids = _ids()
    names = ["mask_batch_index", "mask_position", "scores", "token_ids", "target_log_probs"]
    before = ort.InferenceSession(str(whole_graph), providers=["CPUExecutionProvider"]).run(
        names, _feeds(whole_graph, ids))
    after = ort.InferenceSession(str(rows), providers=["CPUExecutionProvider"]).run(names, _feeds(rows, ids))
    for name, a, b in zip(names, before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
    assert _rows_of(whole_graph, "MatMul", _feeds(whole_graph, ids)) == (3, 16, 32)
    assert _rows_of(rows, "MatMul", _feeds(rows, ids)) == (4, 32)


def test_a_tail_that_mixes_positions_is_left_as_it_was(whole_graph: Path, tmp_path: Path) -> None:
    """A Softmax over the sequence after the last LayerNorm makes every position depend on the others:
    gathering early would change the answers, so the pass must leave the graph byte for byte."""
    model = onnx.load(str(whole_graph))
    graph = model.graph
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    graph.node.insert(list(graph.node).index(flatten),
                      helper.make_node("Softmax", [flatten.input[0]], ["mixed"], axis=1, name="mix_positions"))
    flatten.input[0] = "mixed"
    path = tmp_path / "mixed.onnx"
    onnx.save(model, str(path))
    before = path.read_bytes()
    done = gather_head_rows(path, MASK, len(SPECIALS + WORDS))
    assert not done.applied and path.read_bytes() == before


def test_a_run_without_masks_gives_empty_rows(tiny_variants: Path) -> None:
    """The tail then runs on zero rows (int8's dynamic quantization included): empty answers, no error."""
    ids = _ids()
    ids[ids == MASK] = SPECIALS.index("[UNK]")
    for precision in ("fp32", "int8"):
        path = tiny_variants / f"fill_mask.{precision}.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch, scores = session.run(["mask_batch_index", "scores"], _feeds(path, ids))
        assert batch.shape == (0,) and scores.shape == (0, 4), precision


def test_a_rewrite_that_changes_the_answers_is_not_kept(whole_graph: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the comparison finds a difference, the graph stays byte for byte and no staged file is left."""
    from mlm_export.passes import head_rows

    path = tmp_path / "graph.onnx"
    shutil.copy(whole_graph, path)
    before = path.read_bytes()
    monkeypatch.setattr(head_rows, "_compare", lambda *args: "logits differ by 1.0e+00")
    done = gather_head_rows(path, MASK, len(SPECIALS + WORDS))
    assert not done.applied and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.onnx"]
