"""The CLI through Click's runner: commands, --json, and exit codes (0 ok, 1 error, 2 usage, 3 parity)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from mlm_export.artifact import sha256_file
from mlm_export.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_bare_model_argument_means_export(runner: CliRunner, tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    result = runner.invoke(main, [str(tiny_dir), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["manifest"]["graphs"]["fp32"]["parity"]["passed"]
    assert "exporting the fill-mask form" in result.stderr  # progress goes to stderr, not stdout
    assert re.search(r"done in [0-9.]+ s \(comparing fill_mask\.fp32\.onnx on \d+ probe batches\)", result.stderr)

    again = runner.invoke(main, ["export", str(tiny_dir), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.stderr
    forced = runner.invoke(main, ["export", str(tiny_dir), "--out", str(out), "--force", "-q"])
    assert forced.exit_code == 0 and "PASS fp32" in forced.stdout and forced.stderr == ""


def test_default_output_is_models_name(runner: CliRunner, tiny_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, [str(tiny_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / tiny_dir.name / "manifest.json").is_file()


def test_verify_passes_and_json_parses(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(main, ["verify", str(tiny_artifact), "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and set(report["graphs"]) == {"logits", "fp32"}
    assert report["graphs"]["fp32"]["masked_positions"] >= 50


def test_verify_names_a_tampered_file(runner: CliRunner, tiny_copy: Path) -> None:
    graph = tiny_copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 3] ^= 0xFF
    graph.write_bytes(bytes(data))
    result = runner.invoke(main, ["verify", str(tiny_copy)])
    assert result.exit_code == 1
    assert "model.onnx does not match its sha256" in result.stderr


def _break_decoder_bias(artifact: Path, special: bool = False) -> None:
    """A deliberately wrong graph whose manifest hash is updated, so only parity can catch it: the
    decoder's bias, or (`special`) the scoring output's special-token bias (-inf at special ids)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    path = artifact / "fill_mask.fp32.onnx"
    model = onnx.load(str(path))
    vocab = manifest["model"]["vocab_size"]
    bias = next(t for t in model.graph.initializer if list(t.dims) == [vocab]
                and np.isinf(numpy_helper.to_array(t)).any() == special)
    values = numpy_helper.to_array(bias).copy()
    values += np.random.default_rng(0).normal(0, 5, size=values.shape).astype(values.dtype)
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))
    manifest["files"][path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def test_verify_exits_3_on_a_broken_graph(runner: CliRunner, tiny_copy: Path) -> None:
    _break_decoder_bias(tiny_copy)
    result = runner.invoke(main, ["verify", str(tiny_copy), "--json", "-q"])
    assert result.exit_code == 3
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ParityError" and error["exit_code"] == 3
    report = error["report"]
    assert report["passed"] is False
    assert report["graphs"]["logits"]["passed"] is True
    assert report["graphs"]["fp32"]["passed"] is False
    assert any("max |Δlogit|" in f for f in report["graphs"]["fp32"]["failures"])
    text = runner.invoke(main, ["verify", str(tiny_copy), "-q"])
    assert text.exit_code == 3 and "FAIL fp32" in text.stdout


def test_verify_fails_a_graph_whose_scoring_output_alone_is_wrong(runner: CliRunner, tiny_copy: Path) -> None:
    _break_decoder_bias(tiny_copy, special=True)  # top-k and logits untouched: only target_log_probs moves
    result = runner.invoke(main, ["verify", str(tiny_copy), "--json", "-q"])
    assert result.exit_code == 3
    fp32 = json.loads(result.stdout)["error"]["report"]["graphs"]["fp32"]
    assert fp32["max_abs_logit"] < 1e-4
    assert [f for f in fp32["failures"] if "of the scoring output" in f] == fp32["failures"]


def test_predict_prints_ranked_tokens_and_json(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(main, ["predict", str(tiny_artifact), "the cat [MASK] .", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "(fp32 on CPUExecutionProvider)"  # which variant answered: the default depends on the CPU
    assert lines[1] == "the cat [MASK] ." and [line.split()[0] for line in lines[2:5]] == ["1.", "2.", "3."]
    as_json = runner.invoke(main, ["predict", str(tiny_artifact), "a [MASK] and [MASK]", "the [MASK]", "--json"])
    data = json.loads(as_json.stdout)
    assert data["variant"] == "fp32" and data["provider"] == "CPUExecutionProvider"
    assert len(data["results"]) == 2 and len(data["results"][0]) == 2 and len(data["results"][1]) == 5


def test_predict_errors(runner: CliRunner, tiny_artifact: Path) -> None:
    no_mask = runner.invoke(main, ["predict", str(tiny_artifact), "no mask here"])
    assert no_mask.exit_code == 1 and "has no [MASK]" in no_mask.stderr
    assert runner.invoke(main, ["predict", str(tiny_artifact)]).exit_code == 2
    assert runner.invoke(main, ["predict", str(tiny_artifact), "a [MASK]", "--top-k", "0"]).exit_code == 2
    bad_variant = runner.invoke(main, ["predict", str(tiny_artifact), "a [MASK]", "--variant", "int4"])
    assert bad_variant.exit_code == 1 and "variant 'int4'" in bad_variant.stderr


@pytest.mark.parametrize("command", ["predict", "score", "verify"])
def test_a_mistyped_provider_is_a_usage_error(runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
                                              command: str) -> None:
    extra = {"predict": ["a [MASK]"], "score": [str(tmp_path / "in.txt")], "verify": []}[command]
    (tmp_path / "in.txt").write_text("a b c\n")
    result = runner.invoke(main, [command, str(tiny_artifact), *extra, "--providers", "cdua"])
    assert result.exit_code == 2 and "'cdua' is not one of" in result.stderr
    assert "'cuda'" in result.stderr  # the message lists what to pass instead
    # verify judges bf16 on OpenVINO whatever it is given: openvino is no choice there
    assert ("'openvino'" in result.stderr) == (command != "verify")


def test_providers_on_the_command_line_ignore_case(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(main, ["predict", str(tiny_artifact), "a [MASK]", "--providers", "CPU", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["provider"] == "CPUExecutionProvider"


def test_info_table_and_json(runner: CliRunner, tiny_artifact: Path) -> None:
    table = runner.invoke(main, ["info", str(tiny_artifact)])
    assert table.exit_code == 0
    fp32_row = next(row for row in table.stdout.splitlines() if row.split()[:1] == ["fp32"])
    assert "2/2" in fp32_row and "pass" in fp32_row
    data = json.loads(runner.invoke(main, ["info", str(tiny_artifact), "--json"]).stdout)
    assert data["graphs"]["fp32"]["fusion"]["attention"] == 2


def test_info_on_missing_artifact(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["info", str(tmp_path / "none")])
    assert result.exit_code == 1 and "is not a directory" in result.stderr


def test_encoder_only_checkpoint_exits_1_with_the_reason(runner: CliRunner, minilm_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(main, [str(minilm_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "no trained MLM head" in result.stderr and "cls.predictions.bias" in result.stderr


def test_the_cli_starts_without_the_heavy_libraries() -> None:
    """`mlm-export --help` imports every command's module: they load their library modules inside the command,
    so the start loads neither numpy, onnxruntime nor torch."""
    code = ("import json, sys\nfrom mlm_export.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(json.dumps(sorted(m for m in ('numpy', 'onnxruntime', 'torch', 'transformers', 'openvino')"
            " if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded == [], loaded


def test_usage_errors_exit_2(runner: CliRunner) -> None:
    assert runner.invoke(main, ["export"]).exit_code == 2
    assert runner.invoke(main, ["export", "x", "--opset", "11"]).exit_code == 2
    assert runner.invoke(main, ["verify"]).exit_code == 2


def test_probe_file_replaces_the_packaged_texts(runner: CliRunner, english_artifact: Path, tmp_path: Path) -> None:
    assert json.loads((english_artifact / "manifest.json").read_text())["probe_set"] == "english"
    probes = tmp_path / "probes.txt"
    probes.write_text("The quick brown fox jumps over the lazy dog.\n\nA second line of text here.\n")
    result = runner.invoke(main, ["verify", str(english_artifact), "--probe-file", str(probes), "--json", "-q"])
    assert result.exit_code == 0, result.output
    sets = json.loads(result.stdout)["graphs"]["fp32"]["probe_sets"]
    assert set(sets) == {"all", "shapes", "user texts"}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(english_artifact / "tokenizer.json"))
    pieces = sum(len(tokenizer.encode(line).ids) - 2 for line in probes.read_text().splitlines() if line)
    assert sets["user texts"]["masked_positions"] == pieces == 17  # each word piece masked once
