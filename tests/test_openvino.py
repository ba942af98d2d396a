"""The bf16 variant: the unfused graph, run by OpenVINO with the encoder in bf16 and the MLM head in float32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlm_export import ExportConfig, InputError, OnnxMaskFiller, ProviderError, export_model
from mlm_export.cli import main
from mlm_export.errors import ArtifactError
from mlm_export.manifest import read_manifest
from mlm_export.runtime.graph import control_feeds
from mlm_export.runtime.openvino import OpenVINOSession, cpu_has_bf16
from mlm_export.runtime.backends import create_session
from mlm_export.triton import write_triton_repository

TEXTS = ["the cat [MASK] on the mat .", "a [MASK] dog ran to the [MASK] ."]


@pytest.fixture(scope="module")
def tiny_bf16(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not cpu_has_bf16():  # the export refuses (tested below); this CPU cannot build the variant
        pytest.skip("this CPU has no bf16 (AVX-512 BF16 or AMX): the bf16 variant cannot be exported here")
    out = tmp_path_factory.mktemp("artifacts") / "tiny-bf16"
    return export_model(ExportConfig(str(tiny_dir), out=out, int8=True, bf16=True)).path


def _feeds(filler: OnnxMaskFiller, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    rows = [e.ids for e in filler.tokenizer.encode_batch(TEXTS)]
    ids = np.full((len(rows), max(map(len, rows))), filler.pad_token_id, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    feeds = {"input_ids": ids, "attention_mask": (ids != filler.pad_token_id).astype(np.int64),
             "token_type_ids": np.zeros_like(ids)}
    names = filler.graph.input_names
    return {k: v for k, v in feeds.items() if k in names} | control_feeds(names, 4, targets, exclude_special=True)


def test_export_writes_a_gated_bf16_variant_that_names_where_the_head_begins(tiny_bf16: Path) -> None:
    manifest = read_manifest(tiny_bf16)
    bf16 = manifest.graphs["bf16"]
    assert (bf16.file, bf16.form, bf16.precision, bf16.fusion) == ("fill_mask.bf16.onnx", "fill-mask", "bf16", None)
    assert bf16.tolerance.min_top1_agreement == 0.995 and bf16.tolerance.scope == "realistic"
    assert bf16.parity and bf16.parity["passed"]
    assert bf16.parity["provider"] == "OpenVINO (bf16 encoder, f32 head)"
    assert bf16.input_names == manifest.graphs["fp32"].input_names
    assert bf16.output_names == manifest.graphs["fp32"].output_names
    # standard ONNX only, so OpenVINO can read it: no ONNX Runtime contrib op
    import onnx

    graph = onnx.load(str(tiny_bf16 / bf16.file)).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}
    assert bf16.head_input in {n.input[0] for n in graph.node if n.op_type == "Gemm"}
    info = CliRunner().invoke(main, ["info", str(tiny_bf16)])
    assert info.exit_code == 0 and f"float32 from {bf16.head_input}" in info.output


def test_the_cut_graph_answers_as_the_whole_graph_in_float32(tiny_bf16: Path) -> None:
    """The encoder and head models built from one graph give every output of the uncut graph."""
    manifest = read_manifest(tiny_bf16)
    filler = OnnxMaskFiller.from_pretrained(tiny_bf16, variant="fp32", providers="cpu")
    path = str(tiny_bf16 / manifest.graphs["bf16"].file)
    cut = OpenVINOSession(path, manifest.graphs["bf16"].head_input, threads=1, bf16=False)
    assert cut.description == "OpenVINO (f32 encoder, f32 head)" and len(cut.matmul_precisions()) == 2
    whole = create_session(path, "cpu", threads=1)  # the same file, on ONNX Runtime
    feeds = _feeds(filler, targets=np.array([[5, 6, 7]]))
    names = [o.name for o in whole.get_outputs()]
    assert names == [p.name for p in cut.get_outputs()]
    for name, got, want in zip(names, cut.run(None, feeds), whole.run(None, feeds)):
        assert got.shape == want.shape, name
        if got.dtype.kind in "iu":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_openvino_computes_the_encoder_in_bf16_and_the_head_in_float32(tiny_bf16: Path) -> None:
    manifest = read_manifest(tiny_bf16)
    session = OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), manifest.graphs["bf16"].head_input, 1)
    encoder, head = session.matmul_precisions()
    assert "bf16" in encoder and head == {"f32"}
    whole = OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), None, 1)  # no cut: all of it in bf16
    assert whole.description == "OpenVINO (bf16)" and "bf16" in whole.matmul_precisions()[0]


def test_providers_openvino_picks_the_bf16_variant_and_agrees_with_fp32(tiny_bf16: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_bf16, providers="openvino", threads=1)
    assert (filler.variant, filler.provider) == ("bf16", "OpenVINO")
    fp32 = OnnxMaskFiller.from_pretrained(tiny_bf16, variant="fp32", providers="cpu", threads=1)
    got, want = filler(TEXTS, top_k=3), fp32(TEXTS, top_k=3)

    def flat(result: list) -> list[dict]:
        return [c for masks in result for mask in (masks if isinstance(masks[0], list) else [masks]) for c in mask]

    assert [c["token"] for c in flat(got)] == [c["token"] for c in flat(want)]
    assert [c["score"] for c in flat(got)] == pytest.approx([c["score"] for c in flat(want)], abs=0.02)
    # scoring reads the head's target outputs through the cut too
    scores = filler.score(["the cat sat on the mat ."])
    assert scores[0].pll == pytest.approx(fp32.score(["the cat sat on the mat ."])[0].pll, abs=0.05)


def test_the_bf16_variant_and_openvino_go_together(tiny_bf16: Path, tiny_artifact: Path) -> None:
    with pytest.raises(ProviderError, match="providers='openvino'"):
        OnnxMaskFiller.from_pretrained(tiny_bf16, variant="bf16", providers="cpu")
    with pytest.raises(ProviderError, match="export with --bf16"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="openvino")
    with pytest.raises(ProviderError, match="use variant='bf16'"):
        OnnxMaskFiller.from_pretrained(tiny_bf16, variant="int8", providers="openvino")
    with pytest.raises(InputError, match="io_binding"):
        OnnxMaskFiller.from_pretrained(tiny_bf16, providers="openvino", io_binding=True)
    # ONNX Runtime's default picks stay as they were
    assert OnnxMaskFiller.from_pretrained(tiny_bf16, providers="cpu").variant == "int8"


def test_verify_judges_bf16_on_openvino_whatever_providers_says(tiny_bf16: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(tiny_bf16), "--providers", "cpu", "--json", "-q"])
    assert result.exit_code == 0, result.output
    graphs = json.loads(result.stdout)["graphs"]
    assert graphs["bf16"]["passed"] and graphs["bf16"]["provider"] == "OpenVINO (bf16 encoder, f32 head)"
    assert graphs["int8"]["provider"] == "CPUExecutionProvider"


def test_a_head_input_that_is_not_in_the_graph_is_an_artifact_error(tiny_bf16: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="re-export"):
        OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), "no_such_tensor", 1)
    with pytest.raises(ArtifactError, match="computes no 2-D tensor 'top_k'"):  # the head begins at the masked rows
        OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), "top_k", 1)
    with pytest.raises(ArtifactError, match="computes no 2-D tensor 'input_ids'"):  # a graph input is fed, not computed
        OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), "input_ids", 1)


def test_triton_refuses_the_bf16_variant(tiny_bf16: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="OpenVINO"):
        write_triton_repository(tiny_bf16, tmp_path / "repo", variant="bf16")
    assert not (tmp_path / "repo").exists()


def test_without_openvino_every_way_in_says_how_to_install_it(tiny_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ProviderError, match=r"mlm-export\[openvino\]"):
        export_model(ExportConfig(str(tiny_dir), out=tmp_path / "out", bf16=True))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ProviderError, match=r"mlm-export\[openvino\]"):
        create_session(str(tmp_path / "any.onnx"), "openvino")
    result = CliRunner().invoke(main, ["export", str(tiny_dir), "--out", str(tmp_path / "cli"), "--bf16", "-q"])
    assert result.exit_code == 1 and "Error:" in result.output and "mlm-export[openvino]" in result.output


def test_a_cpu_without_bf16_refuses_to_export_the_variant_before_loading(tiny_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlm_export.exporter.pipeline.cpu_has_bf16", lambda: False)
    monkeypatch.setattr("mlm_export.exporter.pipeline.parse_source",
                        lambda *_a: pytest.fail("the source was read before the refusal"))
    with pytest.raises(ProviderError, match="AVX-512 BF16 or AMX"):
        export_model(ExportConfig(str(tiny_dir), out=tmp_path / "out", bf16=True))
    assert not (tmp_path / "out").exists()


def _log_sum_exp_model(keepdims: int, op: str = "ReduceLogSumExp") -> object:
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], axes=[-1], keepdims=keepdims, name="lse")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "v"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op", ["ReduceLogSumExp", "ReduceLogSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_log_reductions_are_rewritten_into_ops_openvino_reads(op: str, keepdims: int) -> None:
    import openvino as ov

    from mlm_export.passes.portable import rewrite_for_openvino

    keep = bool(keepdims)
    x = (np.arange(15, dtype=np.float32).reshape(3, 5) - 4) * 30  # exp() overflows float32 without the max shift
    if op == "ReduceLogSumExp":
        x[1, 2] = -np.inf  # an excluded token, as exclude_special makes it
        want = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=keep)) + x.max(-1, keepdims=keep)
    else:
        x = np.abs(x) + 0.5
        want = np.log(x.sum(-1, keepdims=keep))
    model = _log_sum_exp_model(keepdims, op)
    assert rewrite_for_openvino(model) == 1
    assert op not in {n.op_type for n in model.graph.node}
    core = ov.Core()
    got = core.compile_model(core.read_model(model.SerializeToString()), "CPU")(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    session = create_session(model.SerializeToString(), "cpu", threads=1)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5)


def test_the_export_check_catches_what_openvino_misreads(tiny_bf16: Path, tiny_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 read check agrees with a direct look: where this OpenVINO reduces ReduceLogSumExp over
    every axis (2026.4 does), the export without the rewrite is refused and leaves nothing; else it passes."""
    import openvino as ov

    from mlm_export.errors import ExportError

    model = _log_sum_exp_model(1)
    core = ov.Core()
    misreads = core.compile_model(core.read_model(model.SerializeToString()), "CPU")(
        np.zeros((2, 3), np.float32))[0].size != 2
    monkeypatch.setattr("mlm_export.passes.portable.rewrite_for_openvino", lambda _model: 0)
    config = ExportConfig(str(tiny_dir), out=tmp_path / "out", bf16=True)
    if misreads:
        with pytest.raises(ExportError, match="OpenVINO reads fill_mask.bf16.onnx differently"):
            export_model(config)
        assert not (tmp_path / "out").exists()
    else:
        assert export_model(config).manifest.graphs["bf16"].parity["passed"]


@pytest.mark.parametrize("family", ["roberta", "albert", "distilbert", "electra", "esm"])
def test_every_family_exports_a_bf16_variant_that_openvino_reads(family: str, tiny_bf16: Path, tiny_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Each family's graph is cut where its head begins, read by OpenVINO as ONNX Runtime reads it (the
    export checks that), and answers as its fp32 graph does; RoBERTa, DistilBERT and ESM have no
    token_type_ids."""
    import layouts

    source = layouts.BUILDERS[family](tmp_path / family)
    manifest = export_model(ExportConfig(str(source), out=tmp_path / "artifact", bf16=True)).manifest
    bf16 = manifest.graphs["bf16"]
    assert bf16.parity and bf16.parity["passed"] and bf16.head_input
    filler = OnnxMaskFiller.from_pretrained(tmp_path / "artifact", providers="openvino", threads=1)
    fp32 = OnnxMaskFiller.from_pretrained(tmp_path / "artifact", variant="fp32", providers="cpu", threads=1)
    texts = [f"the cat {filler.mask_token} on the mat", f"a {filler.mask_token} dog ran"]
    got, want = filler(texts, top_k=1), fp32(texts, top_k=1)
    assert [r[0]["score"] for r in got] == pytest.approx([r[0]["score"] for r in want], abs=0.02)


def test_a_bf16_graph_with_external_data_is_cut_and_served(tiny_bf16: Path, tiny_dir: Path, tmp_path: Path) -> None:
    """Weights in `<graph>.data` (models over 2 GB): OpenVINO reads them beside the graph's own path."""
    out = tmp_path / "external"
    manifest = export_model(ExportConfig(str(tiny_dir), out=out, bf16=True, external_data_above=0)).manifest
    assert manifest.graphs["bf16"].data_file == "fill_mask.bf16.onnx.data"
    assert manifest.graphs["bf16"].parity["passed"]
    filler = OnnxMaskFiller.from_pretrained(out, providers="openvino", threads=1)
    fp32 = OnnxMaskFiller.from_pretrained(out, variant="fp32", providers="cpu", threads=1)
    assert filler(TEXTS[0], top_k=2)[0]["token"] == fp32(TEXTS[0], top_k=2)[0]["token"]


def test_verify_refuses_to_pass_a_bf16_gate_it_cannot_run(tiny_bf16: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without bf16 OpenVINO would judge float32: verify says so instead of passing."""
    monkeypatch.setattr("mlm_export.verify.parity.cpu_has_bf16", lambda: False)
    result = CliRunner().invoke(main, ["verify", str(tiny_bf16), "--json", "-q"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ProviderError" and "AVX-512 BF16 nor AMX" in error["message"]
    # openvino is no choice for verify: a usage error on the command line, an InputError from Python
    result = CliRunner().invoke(main, ["verify", str(tiny_bf16), "--providers", "openvino", "-q"])
    assert result.exit_code == 2 and "'openvino' is not one of 'auto', 'cpu', 'cuda'" in result.output
    from mlm_export.verify import verify_artifact

    with pytest.raises(InputError, match="judges the bf16 variant on OpenVINO by itself"):
        verify_artifact(tiny_bf16, providers="openvino")


def test_ray_scoring_pairs_bf16_with_openvino_before_starting_ray(tiny_bf16: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat .\n")
    result = CliRunner().invoke(main, ["score", str(tiny_bf16), str(texts), "--engine", "ray", "--variant", "bf16",
                                       "--providers", "cpu", "-q"])
    assert result.exit_code == 1 and "runs on OpenVINO" in result.output and "--providers openvino" in result.output


def auto_default() -> str:
    """The variant auto runs here: bf16 on a CPU with AMX, int8 on the others (variants.AUTO_CPU_PRECISIONS)."""
    from mlm_export.runtime.backends import cpu_class

    return "bf16" if cpu_class() == "amx" and cpu_has_bf16() else "int8"


def test_ray_and_local_engines_both_score_with_the_auto_default(tiny_bf16: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat .\na big dog ran to the red tree .\n")
    rows = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        result = CliRunner().invoke(main, ["score", str(tiny_bf16), str(texts), "--engine", engine, "--workers", "1",
                                           "-o", str(out), "--json", "-q"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["variant"] == auto_default()
        rows[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["pll"] for r in rows["ray"]] == pytest.approx([r["pll"] for r in rows["local"]], abs=1e-5)


def test_auto_runs_the_variant_measured_fastest_on_this_cpu_class(tiny_bf16: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    auto = OnnxMaskFiller.from_pretrained(tiny_bf16, threads=1)
    expected = auto_default()
    provider = "OpenVINO" if expected == "bf16" else "CPUExecutionProvider"
    assert (auto.variant, auto.provider) == (expected, provider)
    asked = OnnxMaskFiller.from_pretrained(tiny_bf16, variant="bf16", threads=1)  # another variant: its runtime
    assert (asked.variant, asked.provider) == ("bf16", "OpenVINO")
    info = json.loads(CliRunner().invoke(main, ["info", str(tiny_bf16), "--json"]).stdout)
    assert info["default_variant"] == {"provider": provider, "variant": expected}
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: the best ONNX Runtime variant
    assert OnnxMaskFiller.from_pretrained(tiny_bf16, threads=1).variant == "int8"


def test_a_head_input_that_starts_no_linear_is_refused(tiny_bf16: Path) -> None:
    """A hand-edited head_input at the decoder's output would run the decoder in bf16 under an f32 label."""
    import onnx

    graph = onnx.load(str(tiny_bf16 / "fill_mask.bf16.onnx")).graph
    decoder_output = [n for n in graph.node if n.op_type == "Gemm"][-1].output[0]
    with pytest.raises(ArtifactError, match="feeds no matrix product"):
        OpenVINOSession(str(tiny_bf16 / "fill_mask.bf16.onnx"), decoder_output, 1)


def test_a_broken_openvino_is_passed_over_by_auto_and_named_when_asked_for(tiny_bf16: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "openvino"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('libopenvino.so.2641: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    assert OnnxMaskFiller.from_pretrained(tiny_bf16, threads=1).variant == "int8"
    with pytest.raises(ProviderError, match="cannot be imported .*cannot open shared object file"):
        OnnxMaskFiller.from_pretrained(tiny_bf16, providers="openvino", threads=1)


def test_ray_takes_auto_cpu_or_openvino_and_refuses_the_rest(tiny_bf16: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat .\n")
    result = CliRunner().invoke(main, ["score", str(tiny_bf16), str(texts), "--engine", "ray", "--providers", "cuda",
                                       "-q"])
    assert result.exit_code == 1 and "providers must be auto, cpu or openvino" in result.output


def test_a_variant_must_be_named_after_its_precision(tiny_bf16: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny_bf16, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["int8"]["precision"] = "bf16"
    manifest["graphs"]["int8"]["head_input"] = manifest["graphs"]["bf16"]["head_input"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="graphs.int8 has precision 'bf16'"):
        read_manifest(copy)
