"""Nothing lost, nothing left behind: what --force may replace, crash-clean exports, disk space.

Each refusal is checked three ways: the error names the reason, the user's files are intact, and
no temporary directory is left beside the destination.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlm_export import ArtifactError, ConfigError, ExportConfig, StorageError, export_model
from mlm_export.cli import main
from mlm_export.manifest import read_manifest
from mlm_export.artifact.staging import OWNER, atomic_directory, heal_stale_stagings

FILL_MASK_FORMAT = 6  # the fill-mask graph takes score_positions (format 6; manifest.format_for)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".mlm-export-" in p.name)


@pytest.fixture
def source(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint with one more file of the user's, as in a real model folder."""
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "mybert"))
    (copy / "NOTES.md").write_text("my training notes")
    return copy


# --- what --force may replace -------------------------------------------------------------------

@pytest.mark.parametrize("where,reason", [
    ("source", "is the source model directory"), ("parent of source", "contains the source model directory"),
    ("cwd", "is the current directory"), ("parent of cwd", "is above the current directory"),
])
def test_force_never_replaces_the_source_its_parents_or_the_working_directory(
        runner: CliRunner, source: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, where: str, reason: str) -> None:
    work = tmp_path_factory.mktemp("cwd") / "here"
    work.mkdir()
    (work / "my-script.py").write_text("print('mine')")
    monkeypatch.chdir(work)
    out = {"source": source, "parent of source": tmp_path, "cwd": Path("."), "parent of cwd": work.parent}[where]
    before = _snapshot(tmp_path), _snapshot(work.parent)
    result = runner.invoke(main, [str(source), "--out", str(out), "--force"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and reason in result.stderr and "never replaces it" in result.stderr
    assert "Traceback" not in result.output
    assert (_snapshot(tmp_path), _snapshot(work.parent)) == before, "nothing may be deleted or added"


def test_force_refuses_a_folder_that_is_not_an_artifact(runner: CliRunner, source: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "run1.csv").write_text("a,b\n1,2\n")
    result = runner.invoke(main, [str(source), "--out", str(folder), "--force", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ArtifactError" and "not an mlm-export artifact" in error["message"]
    assert (folder / "run1.csv").read_text() == "a,b\n1,2\n" and _debris(tmp_path) == []


def test_force_refuses_an_artifact_holding_the_users_files(source: Path, tmp_path: Path) -> None:
    out = export_model(ExportConfig(str(source), out=tmp_path / "art")).path
    (out / "my-eval.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"not part of its artifact \(my-eval.txt\)"):
        export_model(ExportConfig(str(source), out=out, force=True))
    assert (out / "my-eval.txt").read_text() == "keep me" and read_manifest(out)


def test_force_refuses_a_file_and_a_foreign_manifest(source: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "model.txt"
    a_file.write_text("data")
    with pytest.raises(ArtifactError, match="not a directory"):
        export_model(ExportConfig(str(source), out=a_file, force=True))
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(ArtifactError, match="does not hold a valid mlm-export manifest"):
        export_model(ExportConfig(str(source), out=other, force=True))
    assert a_file.read_text() == "data" and (other / "manifest.json").is_file()


def test_refusal_comes_before_the_model_is_loaded(runner: CliRunner, source: Path, tmp_path: Path) -> None:
    """A corrupt checkpoint would fail the load: the destination error must be the one reported."""
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = runner.invoke(main, [str(source), "--out", str(source), "--force"])
    assert result.exit_code == 1 and "source model directory" in result.stderr
    assert "safetensors" not in result.stderr


def test_force_replaces_a_signed_artifact(source: Path, tmp_path: Path) -> None:
    from mlm_export import generate_key, sign_artifact

    out = export_model(ExportConfig(str(source), out=tmp_path / "art")).path
    key, _ = generate_key(tmp_path / "key")
    sign_artifact(out, key)
    export_model(ExportConfig(str(source), out=out, force=True))
    assert not (out / "manifest.sig").exists(), "a re-export is not covered by the old signature"


# --- crash-clean exports ------------------------------------------------------------------------

def test_a_failed_build_removes_the_parents_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "nested" / "art"
    with pytest.raises(RuntimeError), atomic_directory(out, force=False) as build:
        assert build.parent.name.startswith(".art.mlm-export-tmp-")
        assert (build.parent / OWNER).is_file() and json.loads((build.parent / OWNER).read_text())["pid"] == os.getpid()
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_fails_before_loading(runner: CliRunner, source: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    result = runner.invoke(main, [str(source), "--out", str(blocker / "art")])
    assert result.exit_code == 1 and "is not a directory" in result.stderr
    assert "loading" not in result.stderr, "the check must run before the slow model load"
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = runner.invoke(main, [str(source), "--out", str(locked / "art")])
        assert result.exit_code == 1 and "cannot write" in result.stderr and "loading" not in result.stderr


def test_not_enough_disk_space_is_refused_before_loading(source: Path, tmp_path: Path) -> None:
    """A safetensors header declaring 4 PB of weights: the estimate must exceed any disk."""
    header = json.dumps({"huge": {"dtype": "F32", "shape": [10**9, 10**6], "data_offsets": [0, 4]}}).encode()
    (source / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    out = tmp_path / "art"
    with pytest.raises(StorageError, match="free; this export needs about"):
        export_model(ExportConfig(str(source), out=out))
    assert not out.exists() and _debris(tmp_path) == []


def test_running_out_of_space_mid_export_is_an_error_not_a_traceback(source: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the first large write fail with EFBIG, as a full disk fails with ENOSPC."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))\n"
        "from mlm_export.cli import main\n"
        f"main([{str(source)!r}, '--out', {str(tmp_path / 'art')!r}, '--json'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "StorageError" and "ran out of disk space" in error["message"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "art").exists() and _debris(tmp_path) == []


def _start_export(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    # SIGINT is ignored in background jobs of a non-interactive shell; the export must see it here
    return subprocess.Popen([sys.executable, "-m", "mlm_export.cli", str(source), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_staging(parent: Path, process: subprocess.Popen) -> Path:
    """The staging directory is complete (marker, build folder) from before the model load until publishing."""
    for _ in range(60_000):
        found = [p for p in parent.iterdir() if ".mlm-export-tmp-" in p.name and (p / "artifact").is_dir()]
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    raise AssertionError("no staging directory appeared")


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_export_cleans_up_and_exits_128_plus_signal(source: Path, tmp_path: Path,
                                                                 signum: int, code: int) -> None:
    out = tmp_path / "art"
    process = _start_export(source, out)
    _wait_for_staging(tmp_path, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate()
    assert process.returncode == code, stderr
    assert "Error: interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and _debris(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mybert"]


def test_nohup_keeps_an_export_alive_through_sighup(source: Path, tmp_path: Path) -> None:
    """A signal the parent set to SIG_IGN (nohup: SIGHUP) must stay ignored."""
    out = tmp_path / "art"
    process = subprocess.Popen([sys.executable, "-m", "mlm_export.cli", str(source), "--out", str(out), "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait_for_staging(tmp_path, process)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert read_manifest(out) and _debris(tmp_path) == []


def test_the_next_export_heals_what_kill_9_left(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    process = _start_export(source, out)
    staging = _wait_for_staging(tmp_path, process)
    process.kill()
    process.wait()
    assert staging.is_dir(), "SIGKILL cannot be caught: the staging directory stays"
    result = CliRunner().invoke(main, [str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"removed {staging}" in result.stderr and "was killed" in result.stderr
    assert _debris(tmp_path) == [] and read_manifest(out)


def test_healing_leaves_live_and_foreign_directories_alone(tmp_path: Path) -> None:
    mine_alive = tmp_path / f".art.mlm-export-tmp-{os.getpid()}-abcd1234"
    mine_alive.mkdir()
    (mine_alive / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": None}))
    no_marker = tmp_path / ".art.mlm-export-tmp-999999999-abcd1234"
    no_marker.mkdir()
    (no_marker / "data.bin").write_bytes(b"x")
    other_host = tmp_path / ".art.mlm-export-tmp-999999998-abcd1234"
    other_host.mkdir()
    (other_host / OWNER).write_text(json.dumps({"pid": 999999998, "host": "another-machine", "start": None}))
    heal_stale_stagings(tmp_path)
    assert mine_alive.is_dir() and no_marker.is_dir() and other_host.is_dir()


def test_healing_removes_an_empty_staging_whose_owner_died_before_writing_its_marker(tmp_path: Path) -> None:
    empty = tmp_path / ".art.mlm-export-tmp-999999996-abcd1234"
    empty.mkdir()
    heal_stale_stagings(tmp_path)
    assert not empty.exists()


def _fake_staging(parent: Path, kind: str, owner: dict) -> Path:
    staging = parent / f".art.mlm-export-{kind}-{owner['pid']}-abcd1234"
    staging.mkdir()
    (staging / OWNER).write_text(json.dumps(owner))
    return staging


def test_healing_treats_a_reused_pid_as_gone(tmp_path: Path) -> None:
    """Our own pid, but another start time: the process that made it is gone and the pid was reused."""
    staging = _fake_staging(tmp_path, "tmp", {"pid": os.getpid(), "host": socket.gethostname(), "start": 1})
    heal_stale_stagings(tmp_path)
    assert not staging.exists()


def test_healing_leaves_a_staging_whose_owner_holds_its_lock(tmp_path: Path) -> None:
    """Another pid namespace (a container sharing the hostname) sees a dead pid; the lock says alive."""
    staging = _fake_staging(tmp_path, "tmp", {"pid": 999999995, "host": socket.gethostname(), "start": None})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys\n"
        f"fh = open({str(staging / OWNER)!r})\n"
        "fcntl.flock(fh.fileno(), fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        heal_stale_stagings(tmp_path)
        assert staging.is_dir()
    finally:
        holder.communicate("")
    heal_stale_stagings(tmp_path)
    assert not staging.exists(), "once the lock is free and the pid dead, it is stale"


def test_healing_keeps_the_destination_when_it_exists(tiny_artifact: Path, tmp_path: Path) -> None:
    aside = _fake_staging(tmp_path, "old", {"pid": 999999994, "host": socket.gethostname(), "start": 1})
    (aside / "artifact").mkdir()
    (aside / "artifact" / "stale.txt").write_text("old copy")
    current = Path(shutil.copytree(tiny_artifact, tmp_path / "art"))
    before = _snapshot(current)
    heal_stale_stagings(tmp_path)
    assert _snapshot(current) == before and not aside.exists()


def test_healing_runs_before_the_destination_check(source: Path, tiny_artifact: Path, tmp_path: Path) -> None:
    """An artifact put back by healing must be found by the --force check, not after the whole export."""
    aside = _fake_staging(tmp_path, "old", {"pid": 999999993, "host": socket.gethostname(), "start": 1})
    shutil.copytree(tiny_artifact, aside / "artifact")
    result = CliRunner().invoke(main, [str(source), "--out", str(tmp_path / "art")])
    assert result.exit_code == 1 and "restored" in result.stderr and "pass --force" in result.stderr
    assert "loading" not in result.stderr and read_manifest(tmp_path / "art")


def test_force_refuses_a_symlinked_destination_and_a_listed_directory(source: Path, tmp_path: Path) -> None:
    out = export_model(ExportConfig(str(source), out=tmp_path / "v3")).path
    link = tmp_path / "current"
    link.symlink_to(out)
    with pytest.raises(ArtifactError, match="is a symlink"):
        export_model(ExportConfig(str(source), out=link, force=True))
    assert link.is_symlink() and read_manifest(out)
    # a name the manifest lists, but a directory of the user's: not ours to delete
    (out / "config.json").unlink()
    (out / "config.json").mkdir()
    (out / "config.json" / "mine.txt").write_text("user data")
    with pytest.raises(ArtifactError, match=r"not part of its artifact \(config.json\)"):
        export_model(ExportConfig(str(source), out=out, force=True))
    assert (out / "config.json" / "mine.txt").read_text() == "user data"


def test_healing_restores_an_artifact_moved_aside_when_the_export_died(tiny_artifact: Path, tmp_path: Path) -> None:
    """Killed between moving the old artifact aside and publishing the new one: put the old one back."""
    aside = tmp_path / ".art.mlm-export-old-999999997-abcd1234"
    aside.mkdir()
    (aside / OWNER).write_text(json.dumps({"pid": 999999997, "host": socket.gethostname(), "start": 1}))
    shutil.copytree(tiny_artifact, aside / "artifact")
    heal_stale_stagings(tmp_path)
    assert read_manifest(tmp_path / "art") and _debris(tmp_path) == []


# --- settings refused before any work -----------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"opset": 13}, "too old"), ({"opset": 99}, "newer than torch.onnx"), ({"opset": "17"}, "integer"),
    ({"int8_recipe": "int4"}, "unknown int8 recipe"), ({"model": ""}, "model must name"),
])
def test_bad_export_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ExportConfig(**({"model": "antiberty"} | kwargs))
    assert info.value.exit_code == 2 and isinstance(info.value, ValueError)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_force_replaces_an_artifact_of_the_previous_format(source: Path, tmp_path: Path) -> None:
    """Format 1 (mlm-export 0.2 and 0.3) is still ours: --force may replace it after an upgrade."""
    old = tmp_path / "art"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"old graph")
    (old / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "files": {"model.onnx": {"sha256": "0" * 64, "size": 9}}}))
    with pytest.raises(ArtifactError, match="pass --force"):
        export_model(ExportConfig(str(source), out=old))
    export_model(ExportConfig(str(source), out=old, force=True))
    assert read_manifest(old).format_version == FILL_MASK_FORMAT
    (old / "mine.txt").write_text("user data")  # and the same rule holds: nothing of the user's goes
    with pytest.raises(ArtifactError, match="not part of its artifact"):
        export_model(ExportConfig(str(source), out=old, force=True))
