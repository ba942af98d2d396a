"""`mlm-export score`: files in and out, bad rows, and the Ray engine against the local one."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlm_export import OnnxMaskFiller
from mlm_export.batch import ScoreJob, score_file
from mlm_export.cli import main
from mlm_export.contracts import ROWS, validate

SEQUENCES = ["the cat sat on the mat .", "the dog ran", "", "a big red house [MASK]", "the house is small",
             " ".join(["cat"] * 70), "a tree"]
BAD = {3: "empty", 4: "mask token", 6: "tokens long"}  # line -> why


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def text_input(tmp_path: Path) -> Path:
    path = tmp_path / "seqs.txt"
    path.write_text("\n".join(SEQUENCES) + "\n", encoding="utf-8")
    return path


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_rows_come_in_input_order_and_bad_rows_are_reported(runner: CliRunner, tiny_artifact: Path,
                                                           text_input: Path) -> None:
    result = runner.invoke(main, ["score", str(tiny_artifact), str(text_input), "--variant", "fp32"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [r["line"] for r in rows] == list(range(1, len(SEQUENCES) + 1))
    assert [r["text"] for r in rows] == SEQUENCES
    for row in rows:
        if row["line"] in BAD:
            assert BAD[row["line"]] in row["error"] and row["pll"] is None
            assert f"line {row['line']} not scored" in result.stderr
        else:
            assert "error" not in row and row["pll"] < 0 and row["n_tokens"] == len(row["text"].split())
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact, variant="fp32")
    assert rows[0]["pll"] == filler.score(SEQUENCES[0]).pll
    assert "scored 4 of 7 sequences" in result.stderr


def test_strict_stops_at_the_first_bad_row_and_writes_nothing(runner: CliRunner, tiny_artifact: Path,
                                                             text_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(main, ["score", str(tiny_artifact), str(text_input), "-o", str(out), "--strict",
                                  "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "InputError" and "line 3: the sequence is empty" in error["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seqs.txt"]  # no output, no temporary file


def test_csv_and_parquet_inputs_and_a_parquet_output(runner: CliRunner, tiny_artifact: Path,
                                                     tmp_path: Path) -> None:
    good = [s for i, s in enumerate(SEQUENCES, 1) if i not in BAD]
    with open(tmp_path / "in.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "heavy"])
        writer.writerows([[i, s] for i, s in enumerate(good)])
    pq.write_table(pa.table({"id": list(range(len(good))), "heavy": good}), tmp_path / "in.parquet")
    outputs = []
    for name in ("in.csv", "in.parquet"):
        out = tmp_path / f"{name}.out.parquet"
        result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / name), "--column", "heavy",
                                      "-o", str(out), "--reduction", "mean", "--per-token", "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["rows"] == summary["scored"] == len(good) and summary["failed"] == []
        outputs.append(pq.read_table(out).to_pylist())
    csv_rows, parquet_rows = outputs
    for row in csv_rows + parquet_rows:  # Parquet holds an `error` column, null on a scored row
        validate(row, ROWS["score"])
    assert [r["line"] for r in csv_rows] == [2, 3, 4, 5]  # CSV: the file's line; Parquet: the row
    assert [r["line"] for r in parquet_rows] == [1, 2, 3, 4]
    for a, b in zip(csv_rows, parquet_rows):
        assert (a["text"], a["pll"], a["token_log_probs"]) == (b["text"], b["pll"], b["token_log_probs"])
        assert a["pll"] == pytest.approx(sum(a["token_log_probs"]) / a["n_tokens"])


@pytest.mark.parametrize("args,says", [
    (["--column", "nope"], "has no column 'nope'"),
    ([], "name the one with the sequences with --column"),
])
def test_a_missing_column_is_named(runner: CliRunner, tiny_artifact: Path, tmp_path: Path, args: list[str],
                                   says: str) -> None:
    (tmp_path / "in.csv").write_text("id,seq\n1,the cat\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), *args])
    assert result.exit_code == 1 and says in result.stderr


def test_an_existing_output_is_replaced_only_with_force(runner: CliRunner, tiny_artifact: Path,
                                                        text_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    out.write_text("my data\n")
    refused = runner.invoke(main, ["score", str(tiny_artifact), str(text_input), "-o", str(out)])
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert out.read_text() == "my data\n"
    forced = runner.invoke(main, ["score", str(tiny_artifact), str(text_input), "-o", str(out), "--force"])
    assert forced.exit_code == 0
    assert len(_rows(out.read_text())) == len(SEQUENCES)


def test_a_failed_run_leaves_no_output(tiny_artifact: Path, text_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    with pytest.raises(Exception, match="not a directory|no manifest|does not exist"):
        score_file(ScoreJob(tmp_path / "missing-artifact", text_input, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seqs.txt"]


def test_the_ray_engine_without_ray_names_the_extra(tiny_artifact: Path, text_input: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(Exception, match=r"mlm-export\[ray\]"):
        score_file(ScoreJob(tiny_artifact, text_input, engine="ray"))


def test_the_output_may_not_be_the_input_even_with_force(runner: CliRunner, tiny_artifact: Path,
                                                        tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["the cat"]}), source)
    before = source.read_bytes()
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(source), "--force"])
    assert result.exit_code == 1 and "is the input" in result.stderr
    assert source.read_bytes() == before


@pytest.mark.parametrize("content,says", [
    ('text\nthe cat\n"the dog\nthe red cat\n', "line 4: cannot read the CSV"),  # a stray quote: not merged
    ("text,text\nthe cat,a dog\n", "2 columns named 'text'"),
])
def test_a_malformed_csv_is_refused_not_misread(runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
                                                content: str, says: str) -> None:
    (tmp_path / "in.csv").write_text(content)
    result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), "-q"])
    assert result.exit_code == 1 and says in result.stderr, result.output


def test_a_parquet_column_of_numbers_is_refused(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "in.parquet")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.parquet")])
    assert result.exit_code == 1 and "column 'text' holds int64, not strings" in result.stderr


def test_text_lines_are_counted_as_wc_does(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    """A byte-order mark is dropped, CRLF ends a line, a lone CR does not; bad UTF-8 names its line."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfthe cat\r\nthe dog\rran\na tree\n")
    rows = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(path), "-q"]).stdout)
    assert [(r["line"], r["text"]) for r in rows] == [(1, "the cat"), (2, "the dog\rran"), (3, "a tree")]



def test_a_line_that_is_not_utf8_is_a_row_error_not_the_end_of_the_run(runner: CliRunner, tiny_artifact: Path,
                                                                      tmp_path: Path) -> None:
    """One bad byte once aborted a whole .txt run; a 1 MB line was already a row error. Now both are rows;
    --strict still stops at it and writes nothing."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"the cat\nthe caf\xe9\na tree\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(path), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.output
    rows = _rows((tmp_path / "o.jsonl").read_text())
    assert [r["line"] for r in rows] == [1, 2, 3] and rows[0]["pll"] < 0 and rows[2]["pll"] < 0
    assert "not UTF-8" in rows[1]["error"] and rows[1]["pll"] is None and rows[1]["text"] == "the caf\\xe9"
    assert "line 2 not scored: not UTF-8" in result.stderr
    strict = runner.invoke(main, ["score", str(tiny_artifact), str(path), "-o", str(tmp_path / "s.jsonl"), "--strict"])
    assert strict.exit_code == 1 and "line 2: not UTF-8" in strict.stderr and not (tmp_path / "s.jsonl").exists()


def test_short_csv_records_and_huge_fields_are_row_errors(runner: CliRunner, tiny_artifact: Path,
                                                          tmp_path: Path) -> None:
    """A record with too few fields (which would score a shifted field) and a field over the csv module's
    128 KiB limit once aborted the run; each is now its row's error, with the other rows scored."""
    with open(tmp_path / "in.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], ["a", "the cat"], ["b"], ["c", "cat " * 40_000], ["d", "a tree"]])
    result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), "-q"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [(r["id"], r["line"]) for r in rows] == [("a", 2), (None, 3), ("c", 4), ("d", 5)]
    assert rows[1]["error"] == "1 fields, the header has 2"
    assert "characters long" in rows[2]["error"]  # over 128 KiB: refused on its length, untokenized
    assert rows[0]["pll"] < 0 and rows[3]["pll"] < 0


def test_a_score_job_takes_string_paths_as_a_user_writes_them(tiny_artifact: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' Python call (ScoreJob with plain strings, as in docs/scoring.md) runs: it once crashed on a
    str artifact path. A non-path is refused with InputError, not a crash later."""
    from mlm_export import InputError, ScoreOptions

    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"heavy": ["the cat sat", "the dog ran"]}), "library.parquet")
    job = ScoreJob(str(tiny_artifact), "library.parquet", "scores.parquet", column="heavy",
                   options=ScoreOptions(reduction="mean"), threads=1)
    assert isinstance(job.artifact, Path) and isinstance(job.output, Path)
    summary = score_file(job)
    assert summary.scored == 2 and not summary.failed
    assert pq.read_table("scores.parquet").column("pll").to_pylist() == pytest.approx(
        [s.pll for s in OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu").score(
            ["the cat sat", "the dog ran"], reduction="mean")], abs=1e-4)
    with pytest.raises(InputError, match="ScoreJob.input must be a path"):
        ScoreJob(str(tiny_artifact), 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["nonsense", "http://[::1"])
def test_a_malformed_ray_address_is_a_usage_error_not_a_bug(runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
                                                           address: str) -> None:
    """Ray raises ValueError for an address it cannot parse: that is the user's input (exit 2, the address
    named), never 'unexpected ValueError ... This is a bug'."""
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--engine", "ray",
                                  "--ray-address", address, "-q"])
    assert result.exit_code == 2, result.output
    assert f"--ray-address {address!r} is not a Ray address" in result.stderr and "bug" not in result.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_output_that_appears_during_the_run_is_never_replaced_without_force(tmp_path: Path, suffix: str) -> None:
    """`score -o out.jsonl` checks the name at the start; a file that appears there before the scores are
    published (a user's, a second run's) is left untouched, and the scores are kept under their own name."""
    from mlm_export import ArtifactError
    from mlm_export.batch.outputs import RowWriter, ScoredRow

    out = tmp_path / f"out{suffix}"
    writer = RowWriter(out, per_token=False)
    writer.write([ScoredRow(1, "the cat", -3.5, 2, None)])
    out.write_text("precious")
    with pytest.raises(ArtifactError, match="left untouched. The output is in") as caught:
        writer.close()
    assert out.read_text() == "precious"
    kept = Path(str(caught.value).rsplit("The output is in ", 1)[1])
    assert kept.is_file() and kept != out and kept.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir() if ".mlm-export-tmp-" in p.name] == []
    forced = RowWriter(out, per_token=False, force=True)
    forced.write([ScoredRow(1, "the cat", -3.5, 2, None)])
    forced.close()
    assert out.read_bytes() != b"precious"


def test_a_failure_mid_stream_ends_json_lines_with_one_error_record(runner: CliRunner, tiny_artifact: Path,
                                                                    tmp_path: Path) -> None:
    """`score --json` without -o streams rows to stdout; --strict stopping at a bad row after good ones
    must leave stdout parseable as JSON Lines: the rows, then one error-v1 record on one line."""
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\n" * 70 + "\nthe house\n")  # the bad row after a first chunk of 64 rows
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--strict", "--json", "-q"])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]  # every line is one JSON value
    assert [r.get("line") for r in records[:-1]] == list(range(1, 65))
    assert records[-1]["schema"] == "error-v1" and "--strict" in records[-1]["error"]["message"]
    validate(records[-1])


def test_a_ray_address_nobody_answers_is_an_error_within_seconds_not_a_hang(runner: CliRunner, tiny_artifact: Path,
                                                                          tmp_path: Path) -> None:
    """`--ray-address 127.0.0.1:1` once printed only Ray's reconnect messages for over 500 s."""
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--engine", "ray",
                                  "--ray-address", "127.0.0.1:1", "-q"])
    assert result.exit_code == 2, result.output
    assert "'127.0.0.1:1': no Ray cluster answers there" in result.stderr


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = {int(c) for c in task.read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_the_ray_engine_streams_the_local_engines_rows_and_sigterm_ends_it_with_143(tiny_variants: Path,
                                                                                 tmp_path: Path) -> None:
    """One local Ray start (the costliest thing in this file) checks two things.

    Rows: on a local instance (ray.init() with no address), two actors, the int8 graph (whose dynamic
    activation scales would show any change of batch), the rows Ray streams are the local engine's, row for
    row: in order, bad rows included, the kept ids joined back, variant and provider named.
    Signals: `ray.init` installs its own SIGTERM handler (`sys.exit(15)`), so a terminated Ray run exited 15
    with no Error: line. It must exit 143 like the local engine, say so, and leave none of the processes it
    started.
    """
    import os
    import signal
    import subprocess
    import time

    compared = 8 * len(SEQUENCES)  # several 32-row blocks, so both actors' rows are among them
    texts = SEQUENCES * 3000  # minutes of scoring: the signal comes long before the end
    ids = [f"seq-{n}" for n in range(len(texts))]
    records = [b"id,text"] + [f"{i},{t}".encode() for i, t in zip(ids, texts)]
    records[20] = b"seq-19,the caf\xe9 sat"  # a line that is not UTF-8: the reader's row error, through Ray too
    (tmp_path / "in.csv").write_bytes(b"\n".join(records) + b"\n")
    (tmp_path / "head.csv").write_bytes(b"\n".join(records[: compared + 1]) + b"\n")
    options = ["--variant", "int8", "--per-token", "--exclude-special", "--threads", "1", "-q"]
    local = CliRunner().invoke(main, ["score", str(tiny_variants), str(tmp_path / "head.csv"), *options])
    assert local.exit_code == 0, local.output
    env = dict(os.environ, RAY_prestart_worker_first_driver="0")  # no idle workers: the actors are all it needs
    process = subprocess.Popen([sys.executable, "-m", "mlm_export.cli", "score", str(tiny_variants),
                                str(tmp_path / "in.csv"), "--engine", "ray", "--workers", "2", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        streamed = [json.loads(process.stdout.readline() or "null") for _ in range(compared)]
        assert None not in streamed, process.stderr.read() if process.stderr else ""
        started = _descendants(process.pid)
        assert started  # Ray's processes (GCS, raylet, the actors' workers)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert streamed == _rows(local.stdout)
    assert [r["id"] for r in streamed] == ids[:compared]  # the bad line's id is kept: the row can be found
    assert "not UTF-8" in streamed[19]["error"]
    assert {(r["variant"], r["provider"]) for r in streamed} == {("int8", "CPUExecutionProvider")}
    assert process.returncode == 143, stderr
    assert "Error: interrupted by SIGTERM" in stderr
    deadline = time.monotonic() + 30
    while (alive := {p for p in started if _running(p)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"Ray processes left running: {sorted(alive)}"


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace").lower()
    except OSError:
        return False
