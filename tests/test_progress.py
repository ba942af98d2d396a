"""Progress: live bars on a terminal (a real pty), plain lines in a pipe, nothing live under -q or --json."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mlm_export.cli"]
CONTROL = re.compile(r"[\r\x1b]")  # carriage returns and escape sequences: what a bar is drawn with
# tqdm's "desc: 50%|███  | 3/6 [00:01<...", for the first graph's comparison
COMPARING = re.compile(r"comparing \S+ on \d+ probe batches: +\d+%\|.*\| \d+/\d+ \[")


def _start_on_a_terminal(args: list[str], stdout_too: bool = False) -> tuple[subprocess.Popen, int]:
    """Start the CLI with stderr (and stdout, if asked) on a pseudo-terminal 120 columns wide; return the
    process and the terminal's end to read."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(CLI + args, stdin=subprocess.DEVNULL,
                               stdout=follower if stdout_too else subprocess.PIPE, stderr=follower)
    os.close(follower)
    return process, leader


def _drain(leader: int) -> bytes:
    """Everything the terminal shows until the child closes its end."""
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            return drawn
        if not chunk:
            return drawn
        drawn += chunk


def _on_a_terminal(args: list[str], stdout_too: bool = False) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal; return its exit code and what it drew."""
    process, leader = _start_on_a_terminal(args, stdout_too)
    drawn = _drain(leader)
    os.close(leader)
    if process.stdout is not None:
        process.stdout.read()
    return process.wait(timeout=120), drawn.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "texts.txt"
    path.write_text("the cat sat on the mat\n" * 40)
    return path


def test_a_pipe_gets_plain_lines_only(tiny_artifact: Path) -> None:
    done = subprocess.run(CLI + ["verify", str(tiny_artifact)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not CONTROL.search(done.stderr), repr(done.stderr)
    assert re.search(r"^mlm-export: done in [0-9.]+ s \(comparing fill_mask\.fp32\.onnx", done.stderr, re.M)


@pytest.mark.parametrize("flag", ["--json", "-q"])
def test_json_and_quiet_draw_nothing_live_on_a_terminal(tiny_artifact: Path, sequences: Path, tmp_path: Path,
                                                        flag: str) -> None:
    code, drawn = _on_a_terminal(["score", str(tiny_artifact), str(sequences), "-o", str(tmp_path / "s.jsonl"),
                                  flag])
    assert code == 0, drawn
    assert not CONTROL.search(drawn.replace("\r\n", "\n")), repr(drawn)  # the pty turns \n into \r\n
    assert "scoring" not in drawn


def test_score_draws_its_bar_on_a_terminal(tiny_artifact: Path, sequences: Path, tmp_path: Path) -> None:
    code, drawn = _on_a_terminal(["score", str(tiny_artifact), str(sequences), "-o", str(tmp_path / "s.jsonl")])
    assert code == 0, drawn
    assert re.search(r"\rscoring: \d+seq \[\d\d:\d\d, ", drawn), repr(drawn)  # count, elapsed, then rate


def test_rows_printed_to_the_terminal_get_no_bar_to_tear(tiny_artifact: Path, sequences: Path) -> None:
    code, drawn = _on_a_terminal(["score", str(tiny_artifact), str(sequences)], stdout_too=True)
    assert code == 0, drawn
    assert drawn.count('"pll"') == 40 and "scoring:" not in drawn


def test_a_terminal_gets_live_bars_and_a_sigterm_mid_bar_still_ends_the_command(tiny_variants: Path) -> None:
    """Bars with counts and each step's duration on a pty; then SIGTERM while a bar is up. Log lines print
    through our handler while bars are live, and a signal arriving mid-line or mid-bar must end the
    command with 143 and no traceback (tqdm's own logging redirect swallowed it once; a half-built bar's
    finalizer printed one)."""
    import select
    import signal

    # four graphs to compare: the signal lands while the first comparison's bar is up, long before the end
    process, leader = _start_on_a_terminal(["verify", str(tiny_variants)])
    drawn = b""
    try:
        while not COMPARING.search(drawn.decode("utf-8", "replace")):  # a comparison's bar, with its count, is up
            ready, _, _ = select.select([leader], [], [], 120)
            assert ready and process.poll() is None, drawn
            drawn += os.read(leader, 65536)
        process.send_signal(signal.SIGTERM)
        drawn += _drain(leader)
    finally:
        os.close(leader)
    text = drawn.decode("utf-8", "replace")
    assert re.search(r"done in [0-9.]+ s \(PyTorch reference logits", text), text  # each step's duration stays
    assert process.wait(timeout=120) == 143, text
    assert "Error: interrupted by SIGTERM" in text and "Traceback" not in text
