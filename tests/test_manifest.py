"""The manifest reader: validated shape, and every file it names confined to the artifact directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlm_export import ArtifactError, OnnxMaskFiller
from mlm_export.cli import main
from mlm_export.manifest import read_manifest


def _edit(artifact: Path, change: Any) -> None:
    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _outside_graph(tmp_path: Path, tiny_artifact: Path) -> tuple[Path, str]:
    """Another directory's graph, with its real sha256: what an attacker would point the manifest at."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    graph = other / "fill_mask.fp32.onnx"
    graph.write_bytes((tiny_artifact / "fill_mask.fp32.onnx").read_bytes())
    return graph, hashlib.sha256(graph.read_bytes()).hexdigest()


@pytest.mark.parametrize("name_of", [
    lambda graph: str(graph),                            # absolute
    lambda graph: f"../elsewhere/{graph.name}",          # climbs out
    lambda graph: f"sub/{graph.name}",                   # a path, not a name
    lambda graph: "..",
])
def test_a_graph_outside_the_artifact_is_never_hashed_or_served(tiny_artifact: Path, tiny_copy: Path,
                                                                tmp_path: Path, name_of: Any) -> None:
    graph, digest = _outside_graph(tmp_path, tiny_artifact)
    name = name_of(graph)

    def point_outside(m: dict) -> None:
        m["files"][name] = {"sha256": digest, "size": graph.stat().st_size}
        m["graphs"]["fp32"]["file"] = name

    _edit(tiny_copy, point_outside)
    with pytest.raises(ArtifactError, match="plain files inside its own directory"):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")
    for command in (["predict", str(tiny_copy), "a [MASK]"], ["verify", str(tiny_copy)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.output
        assert digest[:8] not in result.output.replace(name, "")


def test_a_symlink_out_of_the_artifact_is_refused_without_hashing_the_target(
        tiny_artifact: Path, tiny_copy: Path, tmp_path: Path) -> None:
    graph, digest = _outside_graph(tmp_path, tiny_artifact)
    wrong = "0" * 64
    (tiny_copy / "fill_mask.fp32.onnx").unlink()
    (tiny_copy / "fill_mask.fp32.onnx").symlink_to(graph)
    _edit(tiny_copy, lambda m: m["files"]["fill_mask.fp32.onnx"].update(sha256=wrong))
    with pytest.raises(ArtifactError, match="outside the artifact directory") as info:
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")
    assert digest[:8] not in str(info.value), "no digest of an outside file may be printed"
    result = CliRunner().invoke(main, ["verify", str(tiny_copy)])
    assert result.exit_code == 1 and "outside the artifact directory" in result.stderr
    assert digest[:8] not in result.output


def test_a_symlinked_manifest_out_of_the_artifact_is_refused(tiny_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "other-manifest.json"
    outside.write_bytes((tiny_copy / "manifest.json").read_bytes())
    (tiny_copy / "manifest.json").unlink()
    (tiny_copy / "manifest.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the artifact directory"):
        read_manifest(tiny_copy)


def test_a_symlink_inside_the_artifact_and_a_symlinked_artifact_still_load(tiny_copy: Path, tmp_path: Path) -> None:
    """Links that stay inside are how people deploy (models/current -> models/v3): keep them working."""
    graph = tiny_copy / "fill_mask.fp32.onnx"
    os.replace(graph, tiny_copy / "real.onnx")
    graph.symlink_to("real.onnx")
    current = tmp_path / "current"
    current.symlink_to(tiny_copy)
    filler = OnnxMaskFiller.from_pretrained(current, providers="cpu")
    assert len(filler("the cat [MASK] .", top_k=2)) == 2


REQUIRED = [
    ("format_version",), ("name",), ("source",), ("source", "weights_sha256"), ("model",),
    ("model", "max_length"), ("model", "vocab_size"), ("tokenizer",), ("tokenizer", "special_ids", "mask"),
    ("tokenizer", "file"), ("versions",), ("opset",), ("graphs",), ("graphs", "fp32", "file"),
    ("graphs", "fp32", "form"), ("graphs", "fp32", "tolerance"), ("graphs", "fp32", "tolerance", "top_k"),
    ("files",), ("files", "tokenizer.json", "sha256"),
]


@pytest.mark.parametrize("key", REQUIRED, ids=".".join)
def test_a_missing_key_is_an_artifact_error_naming_it(tiny_copy: Path, key: tuple[str, ...]) -> None:
    def drop(m: dict) -> None:
        parent = m
        for part in key[:-1]:
            parent = parent[part]
        del parent[key[-1]]

    _edit(tiny_copy, drop)
    with pytest.raises(ArtifactError) as info:
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")
    assert f"'{key[-1]}'" in str(info.value) or "format_version None" in str(info.value)
    for command in (["info", str(tiny_copy)], ["predict", str(tiny_copy), "a [MASK]"], ["verify", str(tiny_copy)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.stderr.startswith("Error: "), (command, result.output)
        assert "Traceback" not in result.output


@pytest.mark.parametrize("change,match", [
    (lambda m: m["model"].update(max_length="64"), "model.max_length: '64' is not of type 'integer'"),
    (lambda m: m["graphs"]["fp32"].update(form="embeddings"), "graphs.fp32.form"),
    (lambda m: m["graphs"]["fp32"].update(precision="int4"), "graphs.fp32.precision"),
    (lambda m: m["files"]["model.onnx"].update(sha256="not-a-hash"), "files.model.onnx.sha256"),
    (lambda m: m.update(format_version=True), "format_version True"),
    (lambda m: m.update(format_version=1), "format_version 1; this mlm-export reads 2, 3, 4, 5 and 6. Re-export"),
    (lambda m: m.update(format_version=[3]), "format_version \\[3\\]; this mlm-export reads"),
    (lambda m: m.update(family="GPT 2"), "malformed at family: 'GPT 2' does not match"),
    (lambda m: m.update(family=""), "malformed at family"),
    (lambda m: m.update(family=7), "malformed at family"),
    (lambda m: m.update(family="bert\n"), r"family is 'bert\\n', not a family name"),
    (lambda m: m["graphs"]["fp32"].update(family="roberta"), "graphs.fp32.family is .roberta."),
    (lambda m: m["graphs"]["fp32"].update(inputs=[{"name": "x", "dtype": "int64", "shape": ["batch"]}]),
     "lack input_ids"),
    (lambda m: m.update(graphs={}), "graphs"),
    (lambda m: m.update(format_version=7), "newer than the 6 this mlm-export reads: upgrade"),
    (lambda m: m["graphs"]["fp32"].update(inputs=m["graphs"]["logits"]["inputs"]), "lack top_k"),
    (lambda m: m["graphs"]["fp32"].update(data_file="tokenizer.json"), "graphs.fp32.data_file is 'tokenizer.json'"),
    (lambda m: m["files"].pop("fill_mask.fp32.onnx"),
     "graphs.fp32.file names 'fill_mask.fp32.onnx', which has no sha256"),
])
def test_ill_typed_or_unknown_values_are_refused(tiny_copy: Path, change: Any, match: str) -> None:
    _edit(tiny_copy, change)
    with pytest.raises(ArtifactError, match=match):
        read_manifest(tiny_copy)


@pytest.mark.parametrize("content,match", [
    (b"\xff\xfe{\x00}", "not UTF-8"),
    (b"[1, 2, 3]", "JSON list, not an object"),
    (b"", "not valid JSON"),
])
def test_undecodable_manifests(tiny_copy: Path, content: bytes, match: str) -> None:
    (tiny_copy / "manifest.json").write_bytes(content)
    with pytest.raises(ArtifactError, match=match):
        read_manifest(tiny_copy)
    result = CliRunner().invoke(main, ["info", str(tiny_copy), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["type"] == "ArtifactError"


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(probe_set="../../../etc/passwd"), "probe_set"),
    (lambda m: m["tokenizer"]["special_ids"].update(pad=1e20), "tokenizer.special_ids.pad"),
    (lambda m: m["model"].update(vocab_size=10**30), "model.vocab_size"),
    (lambda m: m["model"].update(max_length=3.0), "model.max_length"),
    (lambda m: m["tokenizer"]["special_ids"].update(mask=999), "outside the vocabulary"),
    (lambda m: m["tokenizer"].update(all_special_ids=[0, 1, 999]), "outside the vocabulary"),
])
def test_hostile_values_are_refused_by_name(tiny_copy: Path, change: Any, match: str) -> None:
    """Values a schema's 'integer' lets through (1e20, 3.0) or that only break later, deep in numpy."""
    _edit(tiny_copy, change)
    with pytest.raises(ArtifactError, match=match):
        read_manifest(tiny_copy)


@pytest.mark.parametrize("content", [b"[" * 100_000 + b"]" * 100_000, b'{"format_version": ' + b"9" * 5000 + b"}"])
def test_pathological_json_is_an_artifact_error(tiny_copy: Path, content: bytes) -> None:
    (tiny_copy / "manifest.json").write_bytes(content)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tiny_copy)


def test_a_link_out_is_refused_even_for_a_file_the_command_never_reads(tiny_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "vocab.txt"
    outside.write_text("[PAD]\n")
    (tiny_copy / "vocab.txt").unlink()
    (tiny_copy / "vocab.txt").symlink_to(outside)
    for command in (["info", str(tiny_copy)], ["predict", str(tiny_copy), "a [MASK]"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "outside the artifact directory" in result.stderr, command


def test_verify_refuses_model_facts_the_source_contradicts(tiny_copy: Path) -> None:
    """Probes are sized from the manifest: an edited max_length must not make verify build 1e6-token inputs."""
    _edit(tiny_copy, lambda m: m["model"].update(max_length=100_000))
    result = CliRunner().invoke(main, ["verify", str(tiny_copy), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ArtifactError" and "model.max_length is 100000" in error["message"]


FAMILIES_OF_FORMATS_2_AND_3 = ["bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert", "esm"]


def _schema(name: str) -> dict:
    from importlib import resources

    return json.loads(resources.files("mlm_export.schemas").joinpath(name).read_text())  # type: ignore[no-any-return]


def test_the_family_is_a_name_in_the_current_format_and_a_frozen_list_before() -> None:
    """Format 4 stores the family as a name, so adding a family edits no schema; formats 2 and 3 keep
    the families of their day."""
    import re

    from mlm_export.families import FAMILIES
    from mlm_export.manifest import FAMILY_NAME, FORMAT_VERSION, SCHEMAS

    family = _schema(SCHEMAS[FORMAT_VERSION])["$defs"]["family"]
    assert "enum" not in family and family["type"] == "string" and family["pattern"] == f"^{FAMILY_NAME}$"
    assert all(re.fullmatch(FAMILY_NAME, name) for name in FAMILIES)
    for version in (2, 3):
        assert _schema(SCHEMAS[version])["$defs"]["family"] == {"enum": FAMILIES_OF_FORMATS_2_AND_3}
    assert set(FAMILIES_OF_FORMATS_2_AND_3) <= set(FAMILIES)


def _rename_family(artifact: Path, family: str) -> None:
    """What an artifact of a family added after this version looks like to it (files are hashed, the
    manifest is not: the edit leaves every file's sha256 true)."""
    def rename(m: dict) -> None:
        m["family"] = family
        for graph in m["graphs"].values():
            graph["family"] = family

    _edit(artifact, rename)


def test_a_family_this_version_does_not_know_is_read_and_served(tiny_copy: Path) -> None:
    """The reader needs no family code: only export and verify look the family up."""
    _rename_family(tiny_copy, "newfamily")
    manifest = read_manifest(tiny_copy)
    assert manifest.family == "newfamily" and {g.family for g in manifest.graphs.values()} == {"newfamily"}
    filler = OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")
    assert len(filler("the cat [MASK] on the mat .", top_k=3)) == 3
    runner = CliRunner()
    shown = runner.invoke(main, ["info", str(tiny_copy)])
    assert shown.exit_code == 0 and "(newfamily, BertForMaskedLM" in shown.stdout, shown.output
    document = runner.invoke(main, ["info", str(tiny_copy), "--json"])  # checked against info-v3 by conftest
    assert document.exit_code == 0 and json.loads(document.stdout)["family"] == "newfamily"
    predicted = runner.invoke(main, ["predict", str(tiny_copy), "the [MASK] sat ."])
    assert predicted.exit_code == 0, predicted.output
    verified = runner.invoke(main, ["verify", str(tiny_copy)])  # needs the family's code: refused, by name
    assert verified.exit_code == 1 and "newfamily" in verified.stderr and "Traceback" not in verified.output


def test_a_format_3_artifact_is_still_read_and_served_and_held_to_its_family_list(tiny_copy: Path) -> None:
    """Format 4 only turned the family list into a name: a format-3 artifact loads without a re-export,
    and its schema still knows only the families of its day."""
    _edit(tiny_copy, lambda m: m.update(format_version=3))
    assert read_manifest(tiny_copy).format_version == 3
    assert OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")("the [MASK] sat .")[0]["token_str"]
    document = CliRunner().invoke(main, ["info", str(tiny_copy), "--json"])  # info-v3 with a format-3 manifest
    assert document.exit_code == 0 and json.loads(document.stdout)["format_version"] == 3
    _rename_family(tiny_copy, "newfamily")
    with pytest.raises(ArtifactError, match="malformed at family: 'newfamily' is not one of"):
        read_manifest(tiny_copy)


def test_a_manifest_survives_its_json_round_trip(tiny_artifact: Path) -> None:
    from mlm_export.manifest import Manifest, parse_manifest

    manifest = read_manifest(tiny_artifact)
    again = Manifest.from_dict(parse_manifest(json.dumps(manifest.to_dict()).encode(), "round trip"))
    assert again == manifest


def test_a_format_2_artifact_is_still_read_and_served(tiny_copy: Path) -> None:
    """Format 3 only added fields (bf16's head_input, the gates' probability bound): an artifact written
    by the previous release loads without a re-export, and is held to its own schema."""
    from mlm_export import OnnxMaskFiller

    from mlm_export.manifest import FORMAT_VERSION

    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    assert manifest["format_version"] == 6 == FORMAT_VERSION  # score_positions: format 6
    manifest["format_version"] = 2
    for graph in manifest["graphs"].values():
        graph["tolerance"].pop("max_abs_prob", None)
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(tiny_copy).format_version == 2
    assert OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")("the [MASK] sat .")[0]["token_str"]
    manifest["graphs"]["fp32"]["tolerance"]["max_abs_prob"] = 0.25  # a format-3 key in a format-2 manifest
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="malformed at graphs.fp32.tolerance"):
        read_manifest(tiny_copy)


def test_a_bf16_graph_must_say_where_its_head_begins(tiny_copy: Path) -> None:
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["graphs"]["bf16"] = dict(manifest["graphs"]["fp32"], precision="bf16")  # no head_input
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="graphs.bf16 has no head_input"):
        read_manifest(tiny_copy)


def test_report_records_are_typed_and_round_trip_unchanged(tiny_artifact: Path) -> None:
    """Fusion counts and parity figures are typed records, and the manifest reads back to the same JSON."""
    from mlm_export.manifest import FusionRecord, ParityRecord

    data = json.loads((tiny_artifact / "manifest.json").read_text())
    manifest = read_manifest(tiny_artifact)
    assert manifest.to_dict() == data
    fp32 = manifest.graphs["fp32"]
    assert isinstance(fp32.parity, ParityRecord) and isinstance(fp32.fusion, FusionRecord)
    assert fp32.parity.passed is True and fp32.parity.failures == ()
    assert fp32.parity.top1_agreement == data["graphs"]["fp32"]["parity"]["top1_agreement"]
    assert fp32.fusion.attention == data["graphs"]["fp32"]["fusion"]["attention"] > 0
    assert fp32.parity["probe_sets"] == data["graphs"]["fp32"]["parity"]["probe_sets"]  # kept as written
