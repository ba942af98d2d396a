"""Output files: whole or absent, never over a file mlm-export did not write, devices and FIFOs as streams."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlm_export import ArtifactError, InputError
from mlm_export.cli import main
from mlm_export.publish import OutputFile


def test_a_file_appears_only_when_published_and_never_over_another(tmp_path: Path) -> None:
    out = OutputFile(tmp_path / "out.txt")
    with out.open() as handle:
        handle.write("ours")
    assert not (tmp_path / "out.txt").exists()  # only the temporary name so far
    (tmp_path / "out.txt").write_text("theirs")  # appears meanwhile
    with pytest.raises(ArtifactError, match="left untouched"):
        out.publish()
    assert (tmp_path / "out.txt").read_text() == "theirs"
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["ours", "theirs"]  # ours kept, visibly
    with pytest.raises(InputError, match="exists; pass --force"):
        OutputFile(tmp_path / "out.txt")
    forced = OutputFile(tmp_path / "out.txt", force=True)
    with forced.open() as handle:
        handle.write("replaced")
    assert forced.publish().read_text() == "replaced"


def test_discard_removes_only_the_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("theirs")
    out = OutputFile(tmp_path / "out.txt", force=True)
    with out.open() as handle:
        handle.write("half")
    out.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "theirs"


def test_a_private_file_is_created_with_its_mode(tmp_path: Path) -> None:
    out = OutputFile(tmp_path / "key", mode=0o600)
    with out.open(binary=True) as handle:
        assert stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == 0o600  # before any byte is written
        handle.write(b"secret")
    assert stat.S_IMODE(out.publish().stat().st_mode) == 0o600


@pytest.mark.parametrize("name,says", [("missing/out.jsonl", "the folder of"), (".", "not a file name")])
def test_bad_output_paths_are_refused_up_front(tmp_path: Path, name: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        OutputFile(tmp_path / name if name != "." else Path("."))


def test_scores_to_a_fifo_are_streamed(tiny_artifact: Path, tmp_path: Path) -> None:
    """A named pipe (or /dev/stdout) is not a file to replace: it is written in place, without --force."""
    fifo = tmp_path / "scores.jsonl"
    os.mkfifo(fifo)
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\nthe dog ran\n")
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = CliRunner().invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(fifo), "-q"])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in received[0].splitlines()] == [1, 2]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_full_output_device_is_a_storage_error(tiny_artifact: Path, tmp_path: Path) -> None:
    """Writing the scores fails (no space): StorageError, exit 1, one line; not a bare OSError."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\n")
    result = CliRunner().invoke(main, ["score", str(tiny_artifact), str(source), "-o", "/dev/full", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "StorageError" and error["message"].startswith("cannot write /dev/full: No space")


def test_keygen_leaves_a_whole_pair_or_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]  # no temporary file left
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    again = CliRunner().invoke(main, ["keygen", str(tmp_path / "k")])
    assert again.exit_code != 0 and "never overwrites a key" in again.stderr
    (tmp_path / "only.pub").write_text("someone's public key")
    clash = CliRunner().invoke(main, ["keygen", str(tmp_path / "only")])
    assert clash.exit_code != 0 and not (tmp_path / "only").exists()  # no half of a pair
    assert (tmp_path / "only.pub").read_text() == "someone's public key"


def test_a_public_key_that_appears_mid_keygen_removes_the_private_key_too(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """keygen checks both names first; a .pub that appears after that must not leave half a pair, nor a
    stray copy of the private key under another name."""
    from mlm_export.artifact.signature import generate_key

    publish = OutputFile.publish

    def racing(self: OutputFile) -> Path:
        if self.path.name.endswith(".pub"):
            self.path.write_text("someone's public key")  # takes the name between the check and the link
        return publish(self)

    monkeypatch.setattr(OutputFile, "publish", racing)
    with pytest.raises(ArtifactError, match="appeared while mlm-export was writing it"):
        generate_key(tmp_path / "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    assert (tmp_path / "k.pub").read_text() == "someone's public key"
