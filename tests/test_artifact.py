"""Atomic writes, --force, and refusing tampered files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlm_export import ArtifactError, ExportConfig, IntegrityError, OnnxMaskFiller, export_model
from mlm_export.artifact import verified_path
from mlm_export.manifest import read_manifest
from mlm_export.artifact.staging import atomic_directory


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with pytest.raises(RuntimeError), atomic_directory(out, force=False) as tmp:
        (tmp / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_build_keeps_the_old_artifact(tiny_artifact: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(tiny_artifact, tmp_path / "art"))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RuntimeError), atomic_directory(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    assert sorted(p.name for p in out.iterdir()) == before and read_manifest(out)


def test_existing_artifact_needs_force(tiny_dir: Path, tmp_path: Path) -> None:
    out = export_model(ExportConfig(str(tiny_dir), out=tmp_path / "art")).path
    created = read_manifest(out).created
    with pytest.raises(ArtifactError, match="--force"):
        export_model(ExportConfig(str(tiny_dir), out=out))
    assert read_manifest(out).created == created
    export_model(ExportConfig(str(tiny_dir), out=out, force=True))
    assert read_manifest(out).graphs["fp32"].parity["passed"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"], "no temporary siblings may remain"


def test_tampered_graph_is_refused_by_the_predictor(tiny_copy: Path) -> None:
    _flip_byte(tiny_copy / "fill_mask.fp32.onnx")
    with pytest.raises(IntegrityError, match="fill_mask.fp32.onnx does not match its sha256"):
        OnnxMaskFiller.from_pretrained(tiny_copy)


def test_tampered_tokenizer_is_refused(tiny_copy: Path) -> None:
    path = tiny_copy / "tokenizer.json"
    path.write_text(path.read_text().replace('"[MASK]"', '"[MASQ]"', 1))
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        OnnxMaskFiller.from_pretrained(tiny_copy)


def test_missing_graph_is_named(tiny_copy: Path) -> None:
    (tiny_copy / "fill_mask.fp32.onnx").unlink()
    with pytest.raises(IntegrityError, match="fill_mask.fp32.onnx is missing"):
        OnnxMaskFiller.from_pretrained(tiny_copy)


@pytest.mark.parametrize("content,match", [
    (None, "no manifest.json"),
    ("{not json", "not valid JSON"),
    ('{"format_version": 99}', "format_version 99"),
])
def test_bad_manifest(tiny_copy: Path, content: str | None, match: str) -> None:
    manifest = tiny_copy / "manifest.json"
    if content is None:
        manifest.unlink()
    else:
        manifest.write_text(content)
    with pytest.raises(ArtifactError, match=match):
        OnnxMaskFiller.from_pretrained(tiny_copy)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not a directory"):
        OnnxMaskFiller.from_pretrained(tmp_path / "nope")


def test_artifact_gets_normal_permissions_not_mkdtemps_private_ones(tiny_artifact: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert tiny_artifact.stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_graph_swapped_after_its_hash_check_is_not_what_gets_loaded(tiny_copy: Path) -> None:
    """verified_path reads through the descriptor it hashed, and notices the swap afterwards."""
    manifest = read_manifest(tiny_copy)
    graph = tiny_copy / "fill_mask.fp32.onnx"
    original = graph.read_bytes()
    with pytest.raises(IntegrityError, match="changed while it was being loaded"), \
            verified_path(tiny_copy, manifest, graph.name) as path:
        swapped = tiny_copy / "swap.tmp"
        swapped.write_bytes((tiny_copy / "model.onnx").read_bytes())
        os.replace(swapped, graph)  # the attacker's graph now has the name
        loaded = Path(path).read_bytes()
    assert loaded == original, "the loader must read the bytes that were hashed"


def test_a_graph_written_in_place_while_loading_is_refused(tiny_copy: Path) -> None:
    manifest = read_manifest(tiny_copy)
    graph = tiny_copy / "fill_mask.fp32.onnx"
    with pytest.raises(IntegrityError, match="changed while it was being loaded"), \
            verified_path(tiny_copy, manifest, graph.name), open(graph, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00")
