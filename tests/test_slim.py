"""Slim serving artifacts: only the graphs an app loads, still hash-checked and still verifiable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlm_export import ArtifactError, ConfigError, IntegrityError, OnnxMaskFiller
from mlm_export.cli import main
from mlm_export.contracts import validate
from mlm_export import generate_key, sign_artifact
from mlm_export import slim_artifact

TEXTS = ["the cat [MASK] on the mat .", "a [MASK] dog ran to the [MASK] ."]


@pytest.fixture(scope="module")
def slim_int8(tiny_variants: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slim") / "int8-only"
    result = CliRunner().invoke(main, ["slim", str(tiny_variants), "--keep", "int8", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate(document)
    assert document["kept"] == ["int8"] and set(document["absent"]) == {"logits", "fp32", "fp16"}
    assert document["bytes"] < document["bytes_before"] / 2
    return out


def test_holds_only_the_kept_graph_and_the_same_manifest(tiny_variants: Path, slim_int8: Path) -> None:
    full = json.loads((tiny_variants / "manifest.json").read_text())
    on_disk = {p.name for p in slim_int8.iterdir()}
    assert full["graphs"]["int8"]["file"] in on_disk
    assert not on_disk & {full["graphs"][g]["file"] for g in ("fp32", "fp16", "logits")}
    assert (slim_int8 / "manifest.json").read_bytes() == (tiny_variants / "manifest.json").read_bytes()
    assert on_disk == set(full["files"]) - {full["graphs"][g]["file"] for g in ("fp32", "fp16", "logits")} \
        | {"manifest.json", "slim.json"}


def test_loads_and_predicts_like_the_full_artifact(tiny_variants: Path, slim_int8: Path) -> None:
    slim = OnnxMaskFiller.from_pretrained(slim_int8, providers="cpu")
    assert slim.variant == "int8"  # the default among what it holds
    full = OnnxMaskFiller.from_pretrained(tiny_variants, providers="cpu", variant="int8")
    assert slim(TEXTS, top_k=3) == full(TEXTS, top_k=3)


def test_a_graph_left_out_is_refused_by_name(slim_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="'fp32' was left out of the slim artifact"):
        OnnxMaskFiller.from_pretrained(slim_int8, providers="cpu", variant="fp32")
    result = CliRunner().invoke(main, ["triton", str(slim_int8), "--repo", str(tmp_path / "repo"),
                                       "--variant", "fp32"])
    assert result.exit_code == 1 and "'fp32' was left out of the slim artifact" in result.stderr


def test_a_kept_file_that_goes_missing_is_still_an_error(slim_int8: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(slim_int8, tmp_path / "copy"))
    graph = json.loads((copy / "manifest.json").read_text())["graphs"]["int8"]["file"]
    (copy / graph).unlink()
    with pytest.raises(IntegrityError, match="is missing"):
        OnnxMaskFiller.from_pretrained(copy, providers="cpu")


def test_verify_checks_what_it_holds_and_names_what_it_cannot(slim_int8: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(slim_int8), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    validate(report)
    assert list(report["graphs"]) == ["int8"] and report["passed"]
    assert set(report["slim"]["absent"]) == {"logits", "fp32", "fp16"}
    text = CliRunner().invoke(main, ["verify", str(slim_int8)])
    assert text.exit_code == 0 and "slim artifact: logits, fp32, fp16 are not in it" in text.stdout
    assert text.stdout.rstrip().endswith("were checked")


def test_info_lists_the_absent_graphs(slim_int8: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(slim_int8)])
    assert result.exit_code == 0, result.output
    assert "slim copy: logits, fp32, fp16 left out" in result.stdout
    assert result.stdout.count("absent (slim)") == 3
    info = json.loads(CliRunner().invoke(main, ["info", str(slim_int8), "--json"]).stdout)
    assert info["absent_graphs"] == ["logits", "fp32", "fp16"] and info["default_variant"]["variant"] == "int8"


def test_a_signed_artifact_stays_verifiable(tiny_variants: Path, tmp_path: Path) -> None:
    signed = Path(shutil.copytree(tiny_variants, tmp_path / "signed"))
    private, public = generate_key(tmp_path / "key")
    sign_artifact(signed, private)
    slim_artifact(signed, tmp_path / "slim", ["fp32", "logits"])
    filler = OnnxMaskFiller.from_pretrained(tmp_path / "slim", providers="cpu", public_key=public)
    assert filler.variant == "fp32"
    result = CliRunner().invoke(main, ["triton", str(tmp_path / "slim"), "--repo", str(tmp_path / "repo"),
                                       "--key", str(public), "--variant", "logits"])
    assert result.exit_code == 0, result.output


def test_a_tampered_source_writes_nothing(tiny_variants: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(tiny_variants, tmp_path / "src"))
    graph = source / json.loads((source / "manifest.json").read_text())["graphs"]["int8"]["file"]
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        slim_artifact(source, tmp_path / "out", ["int8"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("keep,message", [(["fp64"], "has no graph 'fp64'"), ([], "name the graphs to keep"),
                                          ([" , "], "name the graphs to keep")])
def test_bad_keep_is_a_usage_error(tiny_variants: Path, tmp_path: Path, keep: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        slim_artifact(tiny_variants, tmp_path / "out", keep)
    assert not (tmp_path / "out").exists()


def test_out_inside_the_artifact_or_over_it_is_refused(tiny_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="inside the artifact"):
        slim_artifact(tiny_copy, tiny_copy / "slim", ["fp32"])
    result = CliRunner().invoke(main, ["slim", str(tiny_copy), "--keep", "fp32", "--out", str(tiny_copy),
                                       "--force", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["type"] == "ArtifactError"
    assert (tiny_copy / "model.onnx").exists()  # the source is untouched


def test_force_replaces_an_earlier_slim_copy_only(tiny_variants: Path, tmp_path: Path) -> None:
    out = tmp_path / "slim"
    slim_artifact(tiny_variants, out, "fp16,int8")
    assert json.loads((out / "slim.json").read_text())["absent"] == ["logits", "fp32"]
    with pytest.raises(ArtifactError, match="--force"):
        slim_artifact(tiny_variants, out, ["fp32"])
    slim_artifact(tiny_variants, out, ["fp32"], force=True)  # slim.json is its own: replaceable
    assert OnnxMaskFiller.from_pretrained(out, providers="cpu").variant == "fp32"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not part of its artifact"):
        slim_artifact(tiny_variants, out, ["int8"], force=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_forged_slim_marker_cannot_hide_every_graph(slim_int8: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(slim_int8, tmp_path / "copy"))
    (copy / "slim.json").write_text(json.dumps({"absent": ["logits", "fp32", "fp16", "int8"]}))
    with pytest.raises(ArtifactError, match="every graph was left out"):
        OnnxMaskFiller.from_pretrained(copy, providers="cpu")
    (copy / "slim.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid slim marker"):
        OnnxMaskFiller.from_pretrained(copy, providers="cpu")


def test_a_logits_only_copy_serves_triton_and_info_says_it_has_no_default(tiny_variants: Path, tmp_path: Path) -> None:
    slim_artifact(tiny_variants, tmp_path / "logits", ["logits"])
    text = CliRunner().invoke(main, ["info", str(tmp_path / "logits")])
    assert text.exit_code == 0 and "default variant here: none (no fill-mask graph)" in text.stdout
    info = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "logits"), "--json"]).stdout)
    assert info["default_variant"]["variant"] is None
    with pytest.raises(ArtifactError, match=r"a slim copy that left out its fill-mask graphs \(fp16, fp32, int8"):
        OnnxMaskFiller.from_pretrained(tmp_path / "logits", providers="cpu")
    result = CliRunner().invoke(main, ["triton", str(tmp_path / "logits"), "--repo", str(tmp_path / "repo"),
                                       "--variant", "logits"])
    assert result.exit_code == 0, result.output


def test_slimming_a_slim_copy_counts_from_what_it_holds(slim_int8: Path, tmp_path: Path) -> None:
    again = slim_artifact(slim_int8, tmp_path / "again", ["int8"])
    assert again.bytes == again.bytes_before and again.absent == ("logits", "fp32", "fp16")


@pytest.mark.parametrize("marker", ["fifo", "dangling link", "a list"])
def test_a_marker_that_is_not_a_small_json_object_is_refused_at_once(slim_int8: Path, tmp_path: Path,
                                                                     marker: str) -> None:
    import os

    copy = Path(shutil.copytree(slim_int8, tmp_path / "copy"))
    (copy / "slim.json").unlink()
    if marker == "fifo":
        os.mkfifo(copy / "slim.json")  # reading it would block forever
    elif marker == "dangling link":
        (copy / "slim.json").symlink_to(copy / "gone.json")
    else:
        (copy / "slim.json").write_text('["fp32"]')
    with pytest.raises(ArtifactError, match="not a valid slim marker"):
        OnnxMaskFiller.from_pretrained(copy, providers="cpu")


def test_a_marker_cannot_hide_a_tampered_file_from_verify_or_sign(tiny_variants: Path, tmp_path: Path) -> None:
    """A slim.json written into a full artifact, naming a tampered graph as absent: the runtime never loads
    that graph, but the file is still there, so checking the artifact (verify, sign) must still refuse it."""
    from mlm_export import Artifact

    copy = Path(shutil.copytree(tiny_variants, tmp_path / "copy"))
    fp16 = Artifact.open(copy).graphs["fp16"].file
    with open(copy / fp16, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    (copy / "slim.json").write_text(json.dumps({"absent": ["fp16"]}))
    artifact = Artifact.open(copy)
    assert artifact.left_out == ("fp16",)
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        artifact.check_files()
    private, _ = generate_key(tmp_path / "key")
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        sign_artifact(copy, private)
    assert OnnxMaskFiller.from_pretrained(copy, providers="cpu", variant="fp32")(TEXTS[0])  # serving: untouched
