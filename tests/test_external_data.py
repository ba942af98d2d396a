"""Graphs over 2 GB keep their weights in ONNX external data; a lowered threshold exercises that path
on a tiny model (benchmarks/large_export.py proves it above 2 GB)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from mlm_export import ArtifactError, ExportConfig, IntegrityError, OnnxMaskFiller, export_model
from mlm_export.artifact import sha256_file
from mlm_export.manifest import read_manifest


@pytest.fixture(scope="module")
def external(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("external") / "tiny"
    return export_model(ExportConfig(str(tiny_dir), out=out, fp16=True, int8=True, external_data_above=0)).path


def test_every_graph_keeps_its_weights_in_one_hashed_data_file(external: Path) -> None:
    manifest = read_manifest(external)
    assert set(manifest.graphs) == {"logits", "fp32", "fp16", "int8"}
    for graph in manifest.graphs.values():
        assert graph.data_file == graph.file + ".data" and graph.parity["passed"]
        assert manifest.files[graph.data_file].sha256 == sha256_file(external / graph.data_file)
        model = onnx.load(str(external / graph.file), load_external_data=False)
        locations = {entry.value for t in model.graph.initializer for entry in t.external_data
                     if entry.key == "location"}
        assert locations == {graph.data_file}  # one file per graph, named in the manifest
    assert sorted(p.name for p in external.iterdir()) == sorted([*manifest.files, "manifest.json"])


def _tokens(results: list) -> list:
    return [[c["token"] for c in r] if isinstance(r[0], dict) else [[c["token"] for c in m] for m in r]
            for r in results]


def test_the_predictor_answers_as_with_inline_weights(external: Path, tiny_artifact: Path) -> None:
    texts = ["the cat [MASK] on the mat .", "a [MASK] dog and a [MASK] tree"]
    inline = OnnxMaskFiller.from_pretrained(tiny_artifact, variant="fp32", providers="cpu")(texts, top_k=3)
    outside = OnnxMaskFiller.from_pretrained(external, variant="fp32", providers="cpu")(texts, top_k=3)
    assert _tokens(inline) == _tokens(outside)


def test_a_tampered_data_file_is_refused(external: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(external, tmp_path / "copy"))
    data = copy / "fill_mask.int8.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="fill_mask.int8.onnx.data does not match"):
        OnnxMaskFiller.from_pretrained(copy, variant="int8", providers="cpu")


def test_a_data_file_outside_the_artifact_is_refused(external: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(external, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["fp32"]["data_file"] = "../elsewhere.data"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="graphs.fp32.data_file"):
        read_manifest(copy)
