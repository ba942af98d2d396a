"""fp16 and int8 variants: graph contents, gates, and which variant the predictor picks."""

from __future__ import annotations

import json
from dataclasses import replace
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import SPECIALS, WORDS, fewer_realistic_probes, whole_fill_mask_graph
from mlm_export import ExportError, OnnxMaskFiller, ProviderError
from mlm_export.artifact import sha256_file
from mlm_export.manifest import read_manifest
from mlm_export.cli import main
from mlm_export.config import ExportConfig
from mlm_export.passes.int8 import (
    INT8_RECIPE_NAMES,
    INT8_RECIPES,
    Int8Recipe,
    HEAD_BLOCKWISE_MIN_WEIGHTS,
    blockwise_head,
    decoder_weights,
    matmul_roles,
    to_int8,
)
from mlm_export.runtime.predictor import preferred_variant


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_variants_are_written_with_their_gates(tiny_variants: Path) -> None:
    manifest = _manifest(tiny_variants)
    assert set(manifest["graphs"]) == {"logits", "fp32", "fp16", "int8"}
    for name in ("fp16", "int8"):
        graph = manifest["graphs"][name]
        assert graph["form"] == "fill-mask" and graph["precision"] == name
        assert graph["tolerance"]["min_top1_agreement"] == 0.995
        assert graph["tolerance"]["min_topk_overlap"] == 0.99
        assert graph["parity"]["passed"] and graph["parity"]["provider"] == "CPUExecutionProvider"
        assert graph["fusion"]["attention"] == manifest["model"]["num_layers"]
    # a random tiny model has no realistic text probes: its gates fall back to every probe
    assert manifest["probe_set"] is None and manifest["graphs"]["int8"]["parity"]["gated_on"] == "all"


def test_fp16_keeps_float32_io_and_a_float32_tail(tiny_variants: Path) -> None:
    model = onnx.load(str(tiny_variants / "fill_mask.fp16.onnx"))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert inputs.pop("exclude_special") == inputs.pop("score_positions") == onnx.TensorProto.BOOL
    assert set(inputs.values()) == {onnx.TensorProto.INT64}
    assert outputs["scores"] == outputs["logits"] == outputs["target_log_probs"] == onnx.TensorProto.FLOAT
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(int(np.prod(t.dims)) for t in halves) > 0.9 * _manifest(tiny_variants)["model"]["parameters"]
    # the softmax/top-k tail reads float32 logits: the decoder output is cast up before TopK
    producers = {o: n for n in model.graph.node for o in n.output}
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    assert producers[topk.input[0]].op_type == "Cast"


@pytest.mark.parametrize("recipe", INT8_RECIPES, ids=INT8_RECIPE_NAMES)
def test_int8_recipes_quantize_encoder_but_not_head(tiny_variants: Path, tmp_path: Path, recipe: Int8Recipe) -> None:
    path = tmp_path / "int8.onnx"
    to_int8(tiny_variants / "fill_mask.fp32.onnx", path, recipe, _calibration_rows(len(SPECIALS + WORDS)))
    ops = _ops(path)
    layers = _manifest(tiny_variants)["model"]["num_layers"]
    per_role = min(recipe.blockwise_layers, layers) if recipe.blockwise_layers else layers
    blockwise = per_role * len(set(recipe.blockwise) - {"other"})  # a BERT layer has no "other" MatMul
    assert ops.count("QAttention") == layers and "Attention" not in ops
    assert ops.count("MatMulNBits") == blockwise
    assert ops.count("MatMulInteger") == 3 * layers - blockwise  # the other encoder MatMuls are dynamic
    assert "MatMul" not in ops  # no encoder MatMul left in float
    assert ops.count("Gemm") == 2  # MLM head transform and decoder stay float
    assert "EmbedLayerNormalization" in ops  # the embedding Gather stays float too
    # the quantizer's Gemm->MatMul rewrite would store the tied embedding a second time, transposed
    model = onnx.load(str(path))
    decoder = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    assert decoder.input[1].endswith("embeddings.word_embeddings.weight")  # the embedding matrix itself
    assert not [t.name for t in model.graph.initializer if "Transposed" in t.name]
    _assert_layer_norms_stay_split(path, tmp_path, layers)
    _assert_gelu_bias_folds_into_the_int8_matmul(path, tmp_path, layers, recipe)


def _calibration_rows(vocab_size: int) -> list:
    """Six single-row probe batches of random ordinary tokens between [CLS] and [SEP]."""
    from mlm_export.verify.probes import ProbeBatch

    rows = []
    for seed in range(6):
        ids = np.array([[2] + list(np.random.default_rng(seed).integers(5, vocab_size, 10)) + [3]])
        rows.append(ProbeBatch(ids, np.ones_like(ids), np.zeros_like(ids), f"row {seed}", "test"))
    return rows


def _assert_layer_norms_stay_split(path: Path, tmp_path: Path, layers: int) -> None:
    """SkipLayerNormalization is split for speed; ONNX Runtime's optimizer must not fuse it back."""
    import onnxruntime as ort

    assert "SkipLayerNormalization" not in _ops(path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = _ops(tmp_path / "optimized.onnx")
    assert "SkipLayerNormalization" not in optimized
    assert optimized.count("LayerNormalization") == 2 * layers + 1  # two per layer, one in the head


def _assert_gelu_bias_folds_into_the_int8_matmul(path: Path, tmp_path: Path, layers: int,
                                                 recipe: Int8Recipe) -> None:
    """BiasGelu is split into Add + Gelu so that ONNX Runtime folds the bias into the dynamic int8 FFN1
    (DynamicQuantizeMatMul's fifth input); the outputs must not change, to the bit."""
    import onnxruntime as ort
    from onnx import helper

    assert "BiasGelu" not in _ops(path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized-gelu.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    ops = [n.op_type for n in optimized.graph.node]
    if "ffn1" in recipe.blockwise:  # nothing takes the bias of a block-wise FFN1: the pair fuses back
        assert ops.count("BiasGelu") == layers
    else:
        assert "BiasGelu" not in ops and ops.count("Gelu") == layers + 1  # one per layer, one in the head
        producers = {o: n for n in optimized.graph.node for o in n.output}
        before_gelu = [producers[n.input[0]] for n in optimized.graph.node if n.op_type == "Gelu"]
        with_bias = [n for n in before_gelu if n.op_type == "DynamicQuantizeMatMul" and len(n.input) > 4 and n.input[4]]
        assert len(with_bias) == layers
    # the same graph with BiasGelu put back gives the same logits, bit for bit
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    merged = []
    for node in model.graph.node:
        add = producers.get(node.input[0]) if node.op_type == "Gelu" else None
        if add is not None and add.op_type == "Add" and add.name.endswith("/add_bias"):
            merged.remove(add)
            node = helper.make_node("BiasGelu", list(add.input), list(node.output), domain="com.microsoft")
        merged.append(node)
    del model.graph.node[:]
    model.graph.node.extend(merged)
    assert [n.op_type for n in merged].count("BiasGelu") == layers
    feeds = _feeds_for(path)
    split = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], feeds)[0]
    np.testing.assert_array_equal(split, fused)


def _feeds_for(path: Path) -> dict:
    """Two rows of ordinary tokens with a mask each, for every input the graph declares."""
    from mlm_export.runtime.graph import control_feeds

    ids = np.array([[2] + list(np.random.default_rng(7).integers(5, len(SPECIALS + WORDS), 12)) + [3]] * 2)
    ids[0, 3] = ids[1, 7] = SPECIALS.index("[MASK]")
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    tokens = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: tokens[n] for n in names if n in tokens} | control_feeds(names, 5)


def test_top2_makes_block_wise_the_ffn2_of_the_layers_with_the_heaviest_tailed_gelu(tmp_path: Path) -> None:
    """Four layers; in layers 1 and 3 one FFN channel always fires at GELU(30) and GELU(20), far above the
    others. Measured on calibration rows, those are the two FFN2 inputs with the heaviest tails."""
    import torch
    from transformers import BertForMaskedLM

    from conftest import _save_tiny_bert
    from mlm_export.passes.int8 import distinct_recipe, find_int8_recipe

    vocab = SPECIALS + WORDS
    source = _save_tiny_bert(tmp_path / "four", vocab, len(vocab), seed=3, layers=4)
    model = BertForMaskedLM.from_pretrained(source)
    with torch.no_grad():
        for layer, level in ((1, 30.0), (3, 20.0)):
            dense = model.bert.encoder.layer[layer].intermediate.dense
            dense.weight[5].zero_()
            dense.bias[5] = level
    model.save_pretrained(source)
    # the graph the pipeline quantizes: whole (the artifact's runs its last FFN at the masks only)
    fp32 = whole_fill_mask_graph(source, tmp_path / "fill_mask.fp32.onnx", layers=4)
    recipe = find_int8_recipe("dynamic-ffn2-blockwise-top2")
    assert distinct_recipe(fp32, recipe)  # 4 FFN2s, 2 picked: not the same graph as dynamic-ffn2-blockwise
    rows = _calibration_rows(len(vocab))
    to_int8(fp32, tmp_path / "int8.onnx", recipe, rows)
    nbits = [n.name for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert sorted(name.split("layer.")[1].split("/")[0] for name in nbits) == ["1", "3"]
    assert _ops(tmp_path / "int8.onnx").count("MatMulInteger") == 3 * 4 - 2  # the other MatMuls: dynamic
    # weights in external data (models over 2 GB): the same choice, and no scratch file left behind
    from mlm_export.passes.graph_file import load_graph, save_graph

    external = tmp_path / "external"
    external.mkdir()
    save_graph(load_graph(fp32), external / "fill_mask.fp32.onnx", True)
    before = set(external.iterdir())
    to_int8(external / "fill_mask.fp32.onnx", external / "int8.onnx", recipe, rows)
    nbits = [n.name for n in onnx.load(str(external / "int8.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert sorted(name.split("layer.")[1].split("/")[0] for name in nbits) == ["1", "3"]
    assert {p.name for p in set(external.iterdir()) - before} == {"int8.onnx", "int8.onnx.data"}
    # top1: only the heaviest of the two, the channel at GELU(30)
    to_int8(fp32, tmp_path / "top1.onnx", find_int8_recipe("dynamic-ffn2-blockwise-top1"), rows)
    nbits = [n.name for n in onnx.load(str(tmp_path / "top1.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert [name.split("layer.")[1].split("/")[0] for name in nbits] == ["1"]


def test_top2_is_skipped_where_it_would_equal_ffn2_blockwise(tiny_variants: Path) -> None:
    from mlm_export.passes.int8 import distinct_recipe

    two_layers = tiny_variants / "fill_mask.fp32.onnx"
    assert [r.name for r in INT8_RECIPES if not distinct_recipe(two_layers, r)] == ["dynamic-ffn2-blockwise-top2"]
    assert distinct_recipe(two_layers, next(r for r in INT8_RECIPES if r.blockwise_layers == 1))  # 1 of 2


def test_matmul_roles_follow_the_bert_layer(tiny_variants: Path) -> None:
    model = onnx.load(str(tiny_variants / "fill_mask.fp32.onnx"))
    roles = list(matmul_roles(model).values())
    layers = _manifest(tiny_variants)["model"]["num_layers"]
    assert roles == ["attention_output", "ffn1", "ffn2"] * layers


def _check_cascade(entry: dict) -> None:
    """auto keeps the first recipe, in speed order, that passed; every one before it failed (a recipe that
    would build the same graph as another here is skipped). Then, for a vocabulary-wide decoder only, that
    recipe once more with the decoder block-wise, kept if it passed too."""
    tried = [t for t in entry["recipes_tried"] if t["head"] == "float"]
    order = [INT8_RECIPE_NAMES.index(t["recipe"]) for t in tried]
    assert tried[0]["recipe"] == "dynamic" and order == sorted(set(order))
    assert all(not t["passed"] for t in tried[:-1])
    assert entry["recipe"] == tried[-1]["recipe"] and tried[-1]["passed"]
    head = entry["recipes_tried"][len(tried):]
    assert len(head) <= 1 and all(t["recipe"] == entry["recipe"] and t["head"] == "int8-blockwise" for t in head)
    kept = head[0] if head and head[0]["passed"] else tried[-1]
    assert entry["head"] == kept["head"]
    # the stored figures are the kept graph's (its logits differ from the other trial's)
    for key in ("top1_agreement", "topk_overlap", "max_abs_logit"):
        assert kept[key] == entry["parity"][key]


def test_auto_recipe_is_recorded(tiny_variants: Path) -> None:
    _check_cascade(_manifest(tiny_variants)["graphs"]["int8"])


def test_a_small_decoder_stays_float_without_a_trial(tiny_variants: Path) -> None:
    entry = _manifest(tiny_variants)["graphs"]["int8"]
    vocab = _manifest(tiny_variants)["model"]["vocab_size"]
    assert 0 < decoder_weights(tiny_variants / "fill_mask.int8.onnx", vocab) < HEAD_BLOCKWISE_MIN_WEIGHTS
    assert entry["head"] == "float" and {t["head"] for t in entry["recipes_tried"]} == {"float"}
    assert _ops(tiny_variants / "fill_mask.int8.onnx").count("Gemm") == 2


def _decoder_logits(path: Path, artifact: Path) -> np.ndarray:
    """The top-10 logits of the graph at `path` for the artifact's tiny probe texts."""
    from mlm_export.runtime.graph import control_feeds
    from mlm_export.runtime.backends import create_session

    from tokenizers import Tokenizer

    session = create_session(str(path), "cpu")
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    encoded = tokenizer.encode_batch(["the [MASK] sat on the mat", "a [MASK] and a [MASK] ."])
    width = max(len(e.ids) for e in encoded)
    ids = np.array([e.ids + [0] * (width - len(e.ids)) for e in encoded], dtype=np.int64)
    mask = np.array([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encoded], dtype=np.int64)
    names = [i.name for i in session.get_inputs()]
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return session.run(["logits"], {k: v for k, v in feeds.items() if k in names} | control_feeds(names, 10))[0]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_blockwise_head_quantizes_only_the_decoder(tiny_variants: Path, tmp_path: Path, tied: bool) -> None:
    vocab = _manifest(tiny_variants)["model"]["vocab_size"]
    src = tmp_path / "float-head.onnx"
    model = onnx.load(str(tiny_variants / "fill_mask.int8.onnx"))
    decoder = next(n for n in model.graph.node if n.op_type == "Gemm" and "decoder" in n.name)
    table = decoder.input[1]
    if not tied:  # a model whose decoder has its own copy of the table (tie_word_embeddings=False)
        copy = onnx.TensorProto()
        copy.CopyFrom(next(t for t in model.graph.initializer if t.name == table))
        copy.name = decoder.input[1] = "untied_decoder_weight"
        model.graph.initializer.append(copy)
    onnx.save(model, str(src))
    dst = tmp_path / "int8-head.onnx"
    blockwise_head(src, dst, vocab)
    graph = onnx.load(str(dst)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("Gemm") == 1  # the head's transform stays float
    nbits = next(n for n in graph.node if n.op_type == "MatMulNBits")
    assert list(nbits.output) == list(decoder.output) and nbits.input[5] == decoder.input[2]  # bias kept
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits.attribute}
    assert attrs["N"] == vocab and attrs["bits"] == 8 and attrs["block_size"] == 32
    names = {t.name for t in graph.initializer}
    assert table in names  # the input embedding still reads the float table
    assert ("untied_decoder_weight" in names) is False  # an untied float decoder is dropped, not kept twice
    assert decoder_weights(dst, vocab) == 0  # nothing vocabulary-wide left in float
    before, after = _decoder_logits(src, tiny_variants), _decoder_logits(dst, tiny_variants)
    assert np.abs(after - before).max() <= 0.02 * np.abs(before).max()


def test_no_vocabulary_wide_gemm_is_an_export_error(tiny_variants: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no vocabulary-wide Gemm"):
        blockwise_head(tiny_variants / "fill_mask.int8.onnx", tmp_path / "x.onnx", vocab_size=7)
    assert not (tmp_path / "x.onnx").exists()


def _wide(tiny_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> dict:
    """An --int8 export of the tiny model with its decoder counted as vocabulary-wide (the real threshold
    is bert-base-sized), and the int8 entry of its manifest."""
    monkeypatch.setattr("mlm_export.exporter.pipeline.HEAD_BLOCKWISE_MIN_WEIGHTS", 1)
    from mlm_export import export_model

    export_model(ExportConfig(str(tiny_dir), out=out, int8=True, **options))  # type: ignore[arg-type]
    entry = _manifest(out)["graphs"]["int8"]
    _check_cascade(entry)
    assert not list(out.glob("*.head.onnx*"))  # the trial graph is never left beside the artifact
    return entry


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_a_wide_decoder_is_tried_block_wise_and_kept_when_it_passes(tiny_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    external: bool) -> None:
    out = tmp_path / "wide"
    entry = _wide(tiny_dir, out, monkeypatch, external_data_above=0 if external else 2**62)
    assert entry["head"] == "int8-blockwise" and entry["recipes_tried"][-1]["head"] == "int8-blockwise"
    ops = _ops(out / "fill_mask.int8.onnx")
    assert ops.count("Gemm") == 1 and "MatMulNBits" in ops
    assert decoder_weights(out / "fill_mask.int8.onnx", _manifest(out)["model"]["vocab_size"]) == 0
    assert entry.get("data_file") == ("fill_mask.int8.onnx.data" if external else None)
    answers = OnnxMaskFiller.from_pretrained(out, variant="int8")(["the [MASK] sat on the mat ."], top_k=3)
    assert len(answers) == 3 and all(0 < c["score"] <= 1 for c in answers)
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "quantization recipe for int8: dynamic, int8-blockwise MLM decoder; tried dynamic pass" in info.stdout


def test_a_wide_decoder_that_fails_the_gate_stays_float(tiny_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial's decoder scales and bias negated: it ranks the vocabulary upside down, the gate rejects
    it, and the float graph that passed is what the artifact keeps, with that graph's figures."""
    def broken(src: Path, dst: Path, vocab_size: int) -> None:
        blockwise_head(src, dst, vocab_size)
        model = onnx.load(str(dst))
        nbits = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
        for t in model.graph.initializer:
            if t.name == nbits.input[2]:  # the scales: the decoder's products change sign
                t.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(t), t.name))
            if t.name == nbits.input[5]:  # the bias, shared with nothing else here
                negated = onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(t), "negated_bias")
        model.graph.initializer.append(negated)
        nbits.input[5] = "negated_bias"
        onnx.save(model, str(dst))

    monkeypatch.setattr("mlm_export.exporter.pipeline.blockwise_head", broken)
    out = tmp_path / "rejected"
    entry = _wide(tiny_dir, out, monkeypatch)
    trial = entry["recipes_tried"][-1]
    assert trial["head"] == "int8-blockwise" and not trial["passed"] and entry["head"] == "float"
    ops = _ops(out / "fill_mask.int8.onnx")
    assert ops.count("Gemm") == 2 and "MatMulNBits" not in ops
    assert entry["parity"]["max_abs_logit"] == entry["recipes_tried"][-2]["max_abs_logit"] != trial["max_abs_logit"]


def test_a_decoder_trial_that_errs_keeps_the_float_decoder(tiny_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def failing(src: Path, dst: Path, vocab_size: int) -> None:
        dst.write_bytes(b"half-written")
        raise ExportError("8-bit block-wise decoder failed: no kernel")

    monkeypatch.setattr("mlm_export.exporter.pipeline.blockwise_head", failing)
    out = tmp_path / "erred"
    with caplog.at_level("WARNING", logger="mlm_export"):
        entry = _wide(tiny_dir, out, monkeypatch)
    assert entry["head"] == "float" and {t["head"] for t in entry["recipes_tried"]} == {"float"}
    assert "its block-wise trial failed (8-bit block-wise decoder failed: no kernel)" in caplog.text


def test_a_recipe_can_be_forced_from_the_cli(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "forced"
    result = CliRunner().invoke(main, ["export", str(tiny_dir), "--out", str(out), "--int8-recipe",
                                       "blockwise", "-q"])
    assert result.exit_code == 0, result.output
    entry = _manifest(out)["graphs"]["int8"]  # --int8-recipe implies --int8
    assert entry["recipe"] == "blockwise" and entry["recipes_tried"] == []  # forced: no cascade
    assert "MatMulInteger" not in _ops(out / entry["file"]) and "MatMulNBits" in _ops(out / entry["file"])
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "quantization recipe for int8: blockwise, float MLM decoder (chosen by hand)" in info.stdout


def test_unknown_recipe_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_dir), "--out", str(tmp_path / "x"),
                                       "--int8-recipe", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown int8 recipe 'int4'"):
        ExportConfig("antiberty", int8=True, int8_recipe="int4")


def test_predictor_picks_int8_on_cpu_and_never_for_cuda(tiny_variants: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_variants, providers="cpu")
    assert filler.variant == "int8" and "int8" in repr(filler)
    manifest = read_manifest(tiny_variants)
    assert preferred_variant(manifest, "CUDAExecutionProvider") == "fp16"
    manifest = replace(manifest, graphs={k: v for k, v in manifest.graphs.items() if k != "fp16"})
    assert preferred_variant(manifest, "CUDAExecutionProvider") == "fp32"
    assert preferred_variant(manifest, "CPUExecutionProvider") == "int8"


def test_explicit_variants_run_on_cpu_and_agree(tiny_variants: Path) -> None:
    texts = ["the cat [MASK] on the mat .", "a [MASK] dog and a [MASK] tree"]

    def best(variant: str) -> list[tuple[int, float]]:
        filler = OnnxMaskFiller.from_pretrained(tiny_variants, variant=variant, providers="cpu")
        assert filler.variant == variant
        first, (second, third) = filler(texts, top_k=1)
        return [(c[0]["token"], c[0]["score"]) for c in (first, second, third)]

    fp32 = best("fp32")
    for variant in ("fp16", "int8"):
        got = best(variant)
        assert [t for t, _ in got] == [t for t, _ in fp32]
        assert [s for _, s in got] == pytest.approx([s for _, s in fp32], abs=0.05)


def test_int8_with_cuda_is_refused(tiny_variants: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="no CUDA provider"):
            OnnxMaskFiller.from_pretrained(tiny_variants, variant="int8", providers="cuda")
    else:
        with pytest.raises(ProviderError, match="int8 variant is for the CPU provider"):
            OnnxMaskFiller.from_pretrained(tiny_variants, variant="int8", providers="cuda")


def test_io_binding_path_gives_the_same_answers(tiny_variants: Path) -> None:
    texts = ["the [MASK] sat .", "a big [MASK] ran to the [MASK] ."]
    plain = OnnxMaskFiller.from_pretrained(tiny_variants, variant="fp32", providers="cpu")
    bound = OnnxMaskFiller.from_pretrained(tiny_variants, variant="fp32", providers="cpu", io_binding=True)
    assert bound.io_binding and not plain.io_binding
    assert bound(texts, top_k=3) == plain(texts, top_k=3)


def test_mis_normalized_probabilities_fail_a_reduced_precision_gate(tiny_variants: Path, tmp_path: Path) -> None:
    """Top-k ids and logits can be right while every probability is wrong (a softmax normalized over the
    wrong axis): the reduced-precision gates bound |Δ probability| too, and verify exits 3."""
    artifact = Path(shutil.copytree(tiny_variants, tmp_path / "tiny"))
    graph_path = artifact / "fill_mask.int8.onnx"
    model = onnx.load(str(graph_path))
    scores = next(o for o in model.graph.output if o.name == "scores")
    for node in model.graph.node:  # the producer of `scores` now writes half of it
        node.output[:] = ["scores_whole" if name == "scores" else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["scores_whole", "half"], [scores.name]))
    onnx.save(model, str(graph_path))
    manifest = _manifest(artifact)
    manifest["graphs"] = {"int8": manifest["graphs"]["int8"]}
    manifest["files"][graph_path.name] = {"sha256": sha256_file(graph_path), "size": graph_path.stat().st_size}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify", str(artifact), "--json", "-q"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)["error"]["report"]["graphs"]["int8"]
    assert report["top1_agreement"] == 1.0  # the ranking is untouched
    assert any("Δ probability" in f for f in report["failures"]), report["failures"]


# --- the real trained head: gates that mean something ---------------------------------------

def test_antiberty_variants_pass_their_gates_on_antibodies(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    from mlm_export.runtime.openvino import cpu_has_bf16

    manifest = antiberty_export.manifest.to_dict()
    assert manifest["probe_set"] == "antibody"
    for name in ("fp16", "int8") + (("bf16",) if cpu_has_bf16() else ()):
        parity = manifest["graphs"][name]["parity"]
        assert parity["passed"], parity["failures"]
        assert parity["gated_on"] == "antibody" and parity["masked_positions"] >= 300
        assert parity["top1_agreement"] >= 0.995 and parity["topk_overlap"] >= 0.99
        assert parity["max_abs_prob"] <= 0.25
    _check_cascade(manifest["graphs"]["int8"])
    files = manifest["files"]
    assert files["fill_mask.int8.onnx"]["size"] <= 0.30 * files["fill_mask.fp32.onnx"]["size"]
    assert files["fill_mask.fp16.onnx"]["size"] <= 0.55 * files["fill_mask.fp32.onnx"]["size"]


def test_naive_int8_fails_the_gate_and_verify_exits_3(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """All-default dynamic quantization, MLM head included: the recipe other tools ship."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    artifact = Path(shutil.copytree(antiberty_export.path, tmp_path / "antiberty"))
    manifest = _manifest(artifact)
    broken = artifact / "fill_mask.int8.onnx"
    quantize_dynamic(str(artifact / "fill_mask.fp32.onnx"), str(broken), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Attention", "Gemm"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    manifest["graphs"] = {"int8": manifest["graphs"]["int8"]}  # verify only the broken variant
    manifest["files"][broken.name] = {"sha256": sha256_file(broken), "size": broken.stat().st_size}
    (artifact / "manifest.json").write_text(json.dumps(manifest))

    with fewer_realistic_probes(60):  # a broken recipe fails on a sixth of the positions as plainly
        result = CliRunner().invoke(main, ["verify", str(artifact), "--json", "-q"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)["error"]["report"]["graphs"]["int8"]
    assert report["passed"] is False and report["gated_on"] == "antibody"
    assert any("overlap" in f or "top-1" in f for f in report["failures"])


def test_info_shows_every_variant_passing(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["info", str(antiberty_export.path)])
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.strip() and line.split()[0] in ("logits", "fp32", "fp16", "int8")}
    assert set(rows) == {"logits", "fp32", "fp16", "int8"}
    assert all(row.rstrip().endswith("pass") for row in rows.values())
    from mlm_export.runtime.backends import cpu_class
    from mlm_export.runtime.openvino import cpu_has_bf16

    # auto runs bf16 on OpenVINO on a CPU with AMX, int8 elsewhere (variants.AUTO_CPU_PRECISIONS)
    default = "bf16" if cpu_has_bf16() and cpu_class() == "amx" else "int8"
    assert "8/8" in rows["int8"] and f"default variant here: {default}" in result.stdout
