"""One error path: every failure a user can cause is an `Error:` line (or JSON under --json) and an exit code.

Broken checkpoints are real files broken the way downloads and disks break them; nothing here mocks
torch, transformers or safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mlm_export import ExportConfig, SourceError, export_model
from mlm_export.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _broken_copy(tiny_dir: Path, tmp_path: Path, how: str) -> Path:
    copy = Path(shutil.copytree(tiny_dir, tmp_path / f"model-{how}"))
    weights, config = copy / "model.safetensors", copy / "config.json"
    if how == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage safetensors":
        weights.write_bytes(b"\x00" * 64)
    elif how == "config not json":
        config.write_text("{'model_type': 'bert'")
    elif how == "config a list":
        config.write_text("[]")
    elif how == "config not utf-8":
        config.write_bytes(b"\xff\xfe" + config.read_bytes())
    elif how == "config ill-typed":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"hidden_size": "large"}))
    elif how == "tokenizer.json corrupt":
        (copy / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    elif how == "vocab not utf-8":
        (copy / "vocab.txt").write_bytes(b"\xff\xfe\x00garbage")
    return copy


@pytest.mark.parametrize("how,says", [
    ("truncated safetensors", "corrupt or truncated"),
    ("garbage safetensors", "corrupt or truncated"),
    ("config not json", "config.json is not a readable JSON file"),
    ("config a list", "holds a JSON list"),
    ("config not utf-8", "config.json is not a readable JSON file"),
    ("config ill-typed", "could not load"),
    ("tokenizer.json corrupt", "tokenizer.json is not a tokenizer file"),
    ("vocab not utf-8", "as UTF-8 text"),
])
def test_broken_checkpoints_end_in_one_error_line(runner: CliRunner, tiny_dir: Path, tmp_path: Path,
                                                  how: str, says: str) -> None:
    source = _broken_copy(tiny_dir, tmp_path, how)
    out = tmp_path / "art"
    result = runner.invoke(main, [str(source), "--out", str(out)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name], "nothing may be left on disk"


def test_a_blocked_malicious_pickle_says_a_safety_check_fired(tiny_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "evil"
    source.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copyfile(tiny_dir / name, source / name)
    marker = tmp_path / "PWNED"
    state = dict(load_file(str(tiny_dir / "model.safetensors")))
    state["payload"] = _Payload(str(marker))
    torch.save(state, source / "pytorch_model.bin")
    with pytest.raises(SourceError) as info:
        export_model(ExportConfig(str(source), out=tmp_path / "art"))
    message = str(info.value)
    assert "would run code" in message and "refused" in message and "from_tf" not in message
    assert not marker.exists(), "the pickle's payload must never run"


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.path}",))


def test_json_errors_are_one_document_on_stdout(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    cases = [
        (["predict", str(tiny_artifact), "no mask here", "--json"], 1, "InputError"),
        (["info", str(tmp_path / "missing"), "--json"], 1, "ArtifactError"),
        (["predict", str(tiny_artifact), "--json"], 2, "UsageError"),           # TEXTS missing
        (["export", "x", "--opset", "99", "--json"], 2, "UsageError"),
        (["predict", str(tiny_artifact), "a [MASK]", "--threads", "1000000", "--json"], 2, "UsageError"),
        (["export", "antiberty", "--out", ".", "--force", "--json"], 1, "ArtifactError"),
    ]
    for args, code, kind in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == code, (args, result.output)
        error = json.loads(result.stdout)["error"]
        assert (error["type"], error["exit_code"]) == (kind, code), args
        assert error["message"] and "Traceback" not in result.output
        assert result.stderr.rstrip().splitlines()[-1].startswith("Error: "), args


def test_debug_prints_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    plain = runner.invoke(main, ["info", str(tmp_path / "missing")])
    debug = runner.invoke(main, ["info", str(tmp_path / "missing"), "--debug"])
    assert plain.exit_code == debug.exit_code == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr and "ArtifactError" in debug.stderr


def test_an_unexpected_exception_is_reported_as_a_bug(runner: CliRunner, tiny_artifact: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own code failing in a way we did not plan for: still one line, a hint, and exit 1."""
    import mlm_export.artifact.handle

    def broken(*args: object, **kwargs: object) -> dict:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(mlm_export.artifact.handle, "parse_manifest_bytes", broken)
    result = runner.invoke(main, ["info", str(tiny_artifact), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "InternalError"
    assert "ZeroDivisionError" in error["message"] and "--debug" in error["message"]


def test_huge_top_k_is_clamped_to_the_vocabulary(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(main, ["predict", str(tiny_artifact), "a [MASK]", "--top-k", str(2**63), "--json"])
    assert result.exit_code == 0, result.output
    vocab = json.loads((tiny_artifact / "manifest.json").read_text())["model"]["vocab_size"]
    assert len(json.loads(result.stdout)["results"][0]) == vocab


def test_stdout_under_json_is_exactly_one_document_despite_chatty_libraries(tiny_dir: Path, tmp_path: Path) -> None:
    """onnxruntime's optimizer prints to stdout at opset 22; a real process, so file descriptor 1 is real."""
    result = subprocess.run([sys.executable, "-m", "mlm_export.cli", str(tiny_dir), "--out", str(tmp_path / "a"),
                             "--opset", "22", "--json", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # fails on any stray line
    assert document["manifest"]["opset"] == 22


def test_help_and_version_still_print_on_stdout(runner: CliRunner) -> None:
    """Only a command's body has its stdout moved aside; help comes before it."""
    for args in (["--help"], ["export", "--help"], ["predict", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and result.stdout.startswith("Usage: "), args
    assert "version" in runner.invoke(main, ["--version"]).stdout


def test_stdout_guard_sends_every_kind_of_stray_write_to_stderr(tmp_path: Path) -> None:
    """Block-buffered pipes (no PYTHONUNBUFFERED): Python, a saved sys.stdout, the fd, and C's printf."""
    code = (
        "import ctypes, os, sys\n"
        "from mlm_export._stdio import stdout_to_stderr\n"
        "saved = sys.stdout\n"
        "with stdout_to_stderr() as out:\n"
        "    print('python-print')\n"
        "    saved.write('saved-reference\\n')\n"
        "    os.write(1, b'fd-write\\n')\n"
        "    ctypes.CDLL(None).printf(b'c-printf\\n')\n"
        "    out.write('{\"result\": 1}\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"result": 1}\n'
    for stray in ("python-print", "saved-reference", "fd-write", "c-printf"):
        assert stray in result.stderr


def test_a_probe_file_that_is_not_utf8_is_a_usage_error(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_bytes("caf\u00e9 [MASK]\n".encode("latin-1"))
    result = runner.invoke(main, ["verify", str(tiny_artifact), "--probe-file", str(probes), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConfigError" and "is not UTF-8 text" in error["message"]


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_graph_that_answers_nan_is_an_error_and_json_stays_strict(runner: CliRunner, tiny_copy: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from mlm_export.artifact import sha256_file

    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    path = tiny_copy / "fill_mask.fp32.onnx"
    model = onnx.load(str(path))
    bias = next(t for t in model.graph.initializer if list(t.dims) == [manifest["model"]["vocab_size"]]
                and np.isfinite(numpy_helper.to_array(t)).all())  # the decoder's, not the special-token bias
    bias.CopyFrom(numpy_helper.from_array(np.full(list(bias.dims), np.nan, dtype=np.float32), bias.name))
    onnx.save(model, str(path))
    manifest["files"][path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))

    predicted = runner.invoke(main, ["predict", str(tiny_copy), "a [MASK]", "--json"])
    assert predicted.exit_code == 1
    assert "non-finite scores" in _strict_json(predicted.stdout)["error"]["message"]
    verified = runner.invoke(main, ["verify", str(tiny_copy), "--json", "-q"])
    assert verified.exit_code == 3
    assert _strict_json(verified.stdout)["error"]["report"]["passed"] is False


def test_out_spelled_through_a_missing_folder_is_still_the_current_directory(
        runner: CliRunner, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, [str(tiny_dir), "--out", "missing/..", "--force"])
    assert result.exit_code == 1 and "is the current directory" in result.stderr
    assert "loading" not in result.stderr and list(tmp_path.iterdir()) == []


def test_a_long_out_name_fits_its_staging_directory(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / ("a" * 250)
    export_model(ExportConfig(str(tiny_dir), out=out))
    assert (out / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_deleted_working_directory_is_an_error_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r})\n"
            "from mlm_export.cli import main\n"
            "main(['info', 'x'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: the current directory no longer exists; cd to an existing one"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "text"])
def test_a_full_standard_output_is_one_error_line_not_tracebacks(tiny_artifact: Path, json_flag: list[str]) -> None:
    """`predict ... > /dev/full`: the result cannot be written, and neither can a JSON error document sent to
    the same stdout. One `Error:` line on stderr and exit 1, as for any StorageError; no traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "mlm_export.cli", "predict", str(tiny_artifact), "a [MASK] b",
                               *json_flag], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == ["Error: cannot write the result to standard output: No space left "
                                                "on device"]


def test_an_out_path_that_is_not_utf8_is_refused_before_any_work(runner: CliRunner, tmp_path: Path) -> None:
    """A non-UTF-8 --out name (bytes a shell passes through) was 'unexpected UnicodeEncodeError ... a bug'
    after the model had been loaded and traced; it is a usage error at once, naming the path."""
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")
    result = runner.invoke(main, ["export", "antiberty", "--out", out])
    assert result.exit_code == 2, result.output
    assert "is not valid UTF-8" in result.stderr and "bug" not in result.stderr
    assert not any(tmp_path.iterdir())
