"""`mlm-export verify --integrity`: the torch-free check a serving box runs (and `serve` before it answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mlm_export import generate_key, sign_artifact
from mlm_export.artifact import sha256_file
from mlm_export.cli import main


def test_integrity_passes_without_torch_and_says_what_each_graph_answered(tiny_tasks: Path) -> None:
    code = ("import sys, json; from mlm_export.verify.integrity import check_integrity; "
            f"r = check_integrity({str(tiny_tasks)!r}); "
            "print(json.dumps({'report': r.to_dict(), 'torch': 'torch' in sys.modules, "
            "'transformers': 'transformers' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["torch"] is False and out["transformers"] is False
    report = out["report"]
    assert report["passed"] and report["files"] == len(json.loads((tiny_tasks / "manifest.json").read_text())["files"])
    graphs = {g["name"]: g for g in report["graphs"]}
    assert set(graphs) == {"logits", "sparse.fp32", "sparse.fp16", "sparse.int8", "embed.fp32", "embed.fp16",
                           "embed.int8"}
    assert graphs["embed.int8"]["smoke"].startswith("embedding of 32 values")
    assert graphs["sparse.fp32"]["smoke"].startswith("sparse vector of")
    assert all(g["provider"] == "CPUExecutionProvider" for g in graphs.values())


def test_integrity_cli_checks_the_signature_and_prints_its_document(tiny_copy: Path, tmp_path: Path) -> None:
    private, public = generate_key(tmp_path / "signer")
    sign_artifact(tiny_copy, private)
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_copy), "--key", str(public), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "integrity-v1" and document["passed"] and document["signature"]
    assert [g["name"] for g in document["graphs"]] == ["logits", "fp32"]
    assert "fill-mask top-1" in document["graphs"][1]["smoke"] and "PLL" in document["graphs"][1]["smoke"]
    other_private, other_public = generate_key(tmp_path / "other")
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_copy), "--key", str(other_public)])
    assert result.exit_code == 1 and "Error:" in result.stderr and "signature" in result.stderr


def test_integrity_fails_on_a_changed_file_and_on_a_graph_that_cannot_load(tiny_copy: Path) -> None:
    graph = tiny_copy / "fill_mask.fp32.onnx"
    original = graph.read_bytes()
    graph.write_bytes(original[:-100])
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_copy), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["type"] == "IntegrityError"
    # the manifest rewritten to match a graph ONNX Runtime cannot read: the hashes pass, the load does not
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["files"][graph.name] = {"sha256": sha256_file(graph), "size": graph.stat().st_size}
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_copy), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "GraphCheckError" and "fp32" in error["message"]
    report = {g["name"]: g for g in error["report"]["graphs"]}
    assert report["logits"]["passed"] and not report["fp32"]["passed"] and report["fp32"]["error"]
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_copy)])
    assert "fp32           FAILED" in result.stdout and "integrity: FAILED" in result.stdout


def test_integrity_refuses_parity_options(tiny_artifact: Path) -> None:
    result = CliRunner().invoke(main, ["verify", "--integrity", str(tiny_artifact), "--source", "x"])
    assert result.exit_code == 2 and "--source" in result.stderr
