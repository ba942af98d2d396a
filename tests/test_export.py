"""The two graph forms, fusion, and what the manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import BertForMaskedLM

from mlm_export.errors import FusionError
from mlm_export.runtime.graph import control_feeds
from mlm_export.families import BERT
from mlm_export.exporter.trace import export_fill_mask
from mlm_export.passes.fuse import fuse

MASK, PAD, CLS, SEP = 4, 0, 2, 3

FILL_MASK_FORMAT = 6  # the fill-mask graph takes score_positions (format 6; manifest.format_for)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_logits(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    model = BertForMaskedLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     token_type_ids=torch.zeros_like(torch.from_numpy(ids))).logits.numpy()


def _feeds(ids: np.ndarray, mask: np.ndarray, top_k: int | None = None) -> dict:
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if top_k is not None:
        feeds |= control_feeds(("top_k", "target_ids", "exclude_special", "score_positions"), top_k)
    return feeds


def _padded_batch() -> tuple[np.ndarray, np.ndarray]:
    rows = [[CLS, 5, MASK, 7, 8, MASK, SEP], [CLS, 9, 10, SEP], [CLS, MASK, SEP]]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), PAD, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def test_logits_form_has_hf_io_and_matches_torch(tiny_artifact: Path, tiny_dir: Path) -> None:
    session = _session(tiny_artifact / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(i.type == "tensor(int64)" for i in session.get_inputs())
    ids, mask = _padded_batch()
    (logits,) = session.run(None, _feeds(ids, mask))
    ref = _torch_logits(tiny_dir, ids, mask)
    assert logits.shape == ref.shape
    real = mask.astype(bool)
    assert np.abs(logits[real] - ref[real]).max() < 1e-4


def test_fill_mask_form_returns_masks_in_row_major_order(tiny_artifact: Path, tiny_dir: Path) -> None:
    ids, mask = _padded_batch()
    b, p, scores, token_ids, logits, _ = _session(tiny_artifact / "fill_mask.fp32.onnx").run(
        None, _feeds(ids, mask, top_k=4))
    expected = np.nonzero(ids == MASK)
    assert b.tolist() == expected[0].tolist() and p.tolist() == expected[1].tolist()
    assert scores.shape == token_ids.shape == logits.shape == (3, 4)
    ref = _torch_logits(tiny_dir, ids, mask)[expected]
    assert token_ids.tolist() == np.argsort(-ref, axis=1)[:, :4].tolist()
    ref_probs = np.exp(ref) / np.exp(ref).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.take_along_axis(ref_probs, token_ids, 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0), "top-k must come sorted by score"


@pytest.mark.parametrize("exclude_special", [False, True])
def test_scoring_output_is_pytorchs_log_softmax_at_the_targets(tiny_artifact: Path, tiny_dir: Path,
                                                               exclude_special: bool) -> None:
    """target_log_probs: a row of targets per mask, or one row for every mask, with or without the
    special tokens in the softmax; the top-k outputs are unchanged by it."""
    ids, mask = _padded_batch()
    where = np.nonzero(ids == MASK)
    ref = _torch_logits(tiny_dir, ids, mask)[where].astype(np.float64)
    if exclude_special:
        ref[:, [PAD, 1, CLS, SEP, MASK]] = -np.inf  # conftest's SPECIALS: [PAD] [UNK] [CLS] [SEP] [MASK]
    top = ref.max(1, keepdims=True)
    ref_log_probs = ref - top - np.log(np.exp(ref - top).sum(1, keepdims=True))
    session = _session(tiny_artifact / "fill_mask.fp32.onnx")
    per_mask = np.array([[5, 9], [12, 30], [7, 7]])
    shared = np.array([[6, 20, 11]])
    base = _feeds(ids, mask, top_k=3)
    plain = session.run(["token_ids", "scores"], base)
    for targets in (per_mask, shared):
        feeds = base | {"target_ids": targets, "exclude_special": np.array(exclude_special)}
        token_ids, scores, got = session.run(["token_ids", "scores", "target_log_probs"], feeds)
        want = np.take_along_axis(ref_log_probs, np.broadcast_to(targets, (3, targets.shape[1])), axis=1)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert token_ids.tolist() == plain[0].tolist() and np.array_equal(scores, plain[1])


def test_scoring_output_is_empty_when_no_targets_are_asked(tiny_artifact: Path) -> None:
    ids, mask = _padded_batch()
    (got,) = _session(tiny_artifact / "fill_mask.fp32.onnx").run(["target_log_probs"], _feeds(ids, mask, top_k=3))
    assert got.shape == (3, 0)


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_is_chosen_at_run_time(tiny_artifact: Path, top_k: int) -> None:
    ids, mask = _padded_batch()
    out = _session(tiny_artifact / "fill_mask.fp32.onnx").run(None, _feeds(ids, mask, top_k))
    assert out[2].shape == (3, top_k) and out[3].shape == (3, top_k)


def test_top_k_beyond_vocabulary_is_clamped(tiny_artifact: Path) -> None:
    vocab = json.loads((tiny_artifact / "manifest.json").read_text())["model"]["vocab_size"]
    ids, mask = _padded_batch()
    scores = _session(tiny_artifact / "fill_mask.fp32.onnx").run(None, _feeds(ids, mask, 10_000))[2]
    assert scores.shape == (3, vocab)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_zero_masks_in_whole_batch(tiny_artifact: Path) -> None:
    ids = np.array([[CLS, 5, 6, SEP], [CLS, 7, SEP, PAD]], dtype=np.int64)
    mask = (ids != PAD).astype(np.int64)
    b, p, scores, token_ids, *_ = _session(tiny_artifact / "fill_mask.fp32.onnx").run(
        None, _feeds(ids, mask, 5))
    assert b.shape == (0,) and p.shape == (0,) and scores.shape[0] == 0 and token_ids.shape[0] == 0


@pytest.mark.parametrize("batch,length", [(1, 3), (1, 64), (5, 17), (16, 9)])
def test_dynamic_batch_and_sequence(tiny_artifact: Path, batch: int, length: int) -> None:
    rng = np.random.default_rng(batch * 100 + length)
    ids = rng.integers(5, 30, size=(batch, length)).astype(np.int64)
    ids[:, 0], ids[:, -1], ids[:, length // 2] = CLS, SEP, MASK
    out = _session(tiny_artifact / "fill_mask.fp32.onnx").run(None, _feeds(ids, np.ones_like(ids), 2))
    assert out[0].tolist() == list(range(batch))
    logits = _session(tiny_artifact / "model.onnx").run(None, _feeds(ids, np.ones_like(ids)))[0]
    assert logits.shape[:2] == (batch, length)


def test_fusion_counts_match_layers_and_manifest(tiny_artifact: Path) -> None:
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    graph = onnx.load(str(tiny_artifact / "fill_mask.fp32.onnx")).graph
    attention = sum(n.op_type == "Attention" for n in graph.node)
    fusion = manifest["graphs"]["fp32"]["fusion"]
    assert attention == manifest["model"]["num_layers"] == fusion["attention"] == 2
    assert fusion["complete"] is True
    assert fusion["counts"]["SkipLayerNormalization"] == sum(
        n.op_type == "SkipLayerNormalization" for n in graph.node)
    assert any(n.op_type == "EmbedLayerNormalization" for n in graph.node)


def test_fusion_shortfall_fails_unless_allowed(tiny_dir: Path, tmp_path: Path) -> None:
    model = BertForMaskedLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    raw = tmp_path / "raw.onnx"
    export_fill_mask(model, BERT, raw, 17, MASK, (PAD, 1, CLS, SEP, MASK))
    with pytest.raises(FusionError, match="attention fused in 2 of 3 layers"):
        fuse(raw, tmp_path / "fused.onnx", num_heads=4, hidden_size=32, num_layers=3)
    assert not (tmp_path / "fused.onnx").exists()
    report = fuse(raw, tmp_path / "fused.onnx", num_heads=4, hidden_size=32, num_layers=3,
                  allow_unfused=True)
    assert report.to_dict()["complete"] is False and report.to_dict()["allow_unfused"] is True


def test_tied_decoder_weight_is_stored_once(english_artifact: Path) -> None:
    """The 30522-row embedding dominates this model, so a second copy would be obvious."""
    manifest = json.loads((english_artifact / "manifest.json").read_text())
    size = manifest["files"]["fill_mask.fp32.onnx"]["size"]
    assert size <= 1.05 * manifest["model"]["float32_parameter_bytes"]
    assert manifest["graphs"]["fp32"]["weight_bytes"] <= 1.05 * manifest["model"]["float32_parameter_bytes"]
    for name in ("fill_mask.fp32.onnx", "model.onnx"):  # the logits form too, for optimum
        graph = onnx.load(str(english_artifact / name)).graph
        big = [i.name for i in graph.initializer if len(i.dims) == 2 and 30522 in i.dims]
        assert len(big) == 1, (name, big)
    assert manifest["files"]["model.onnx"]["size"] <= 1.05 * manifest["model"]["float32_parameter_bytes"]


def test_manifest_records_source_versions_and_hashes(tiny_artifact: Path, tiny_dir: Path) -> None:
    from mlm_export.artifact import sha256_file

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["format_version"] == FILL_MASK_FORMAT and manifest["opset"] >= 17
    assert manifest["source"]["kind"] == "local" and manifest["source"]["location"] == str(tiny_dir)
    assert len(manifest["source"]["weights_sha256"]) == 64
    for lib in ("torch", "transformers", "onnx", "onnxruntime"):
        assert manifest["versions"][lib]
    on_disk = {p.name for p in tiny_artifact.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tiny_artifact / name)
        assert entry["size"] == (tiny_artifact / name).stat().st_size
    for graph in manifest["graphs"].values():
        assert graph["parity"]["passed"] is True
        assert graph["parity"]["masked_positions"] >= 50
