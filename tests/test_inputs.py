"""Input hygiene for files of sequences: FASTA, kept id columns, unknown-token warnings, and rows that
say which variant and provider scored them."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlm_export import OnnxMaskFiller
from mlm_export.batch import ScoreJob, score_file
from mlm_export.cli import main
from mlm_export.contracts import ROWS, validate

FASTA = """>seq1 the first record
the cat
sat on the mat

; an old-style comment line
>seq2
the dog ran
>empty nothing follows
>seq3\tA tab-separated description
a tree
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_fasta_records_are_joined_and_keep_their_ids(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "chains.fasta"
    source.write_text(FASTA)
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--variant", "fp32", "-q"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [(r["id"], r["description"], r["line"], r["text"]) for r in rows] == [
        ("seq1", "the first record", 1, "thecatsatonthemat"),  # sequence lines joined, whitespace dropped
        ("seq2", "", 6, "thedogran"),
        ("empty", "nothing follows", 8, ""),
        ("seq3", "A tab-separated description", 9, "atree")]
    assert "empty" in rows[2]["error"] and rows[2]["pll"] is None
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact, variant="fp32")
    assert rows[1]["pll"] == pytest.approx(filler.score("thedogran").pll, abs=1e-6)
    for row in rows:
        validate(row, ROWS["score"])


def test_a_fasta_file_saved_as_text_is_refused_not_scored_header_by_header(runner: CliRunner, tiny_artifact: Path,
                                                                           tmp_path: Path) -> None:
    """Its headers were scored as sequences (exit 0, no warning). --format says how to read it instead."""
    source = tmp_path / "chains.txt"
    source.write_text(FASTA)
    refused = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(tmp_path / "o.jsonl")])
    assert refused.exit_code == 1 and "line 1 is a FASTA header" in refused.stderr
    assert "--format fasta" in refused.stderr
    assert not (tmp_path / "o.jsonl").exists()
    as_fasta = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--format", "fasta", "-q"])
    assert [r["id"] for r in _rows(as_fasta.stdout)] == ["seq1", "seq2", "empty", "seq3"]
    as_text = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--format", "text", "-q"])
    assert _rows(as_text.stdout)[0]["text"] == ">seq1 the first record"  # asked for: every line as it is
    quoted = tmp_path / "mail.txt"
    quoted.write_text("> the cat sat\nthe dog ran\n")  # a quoted line is not a FASTA header
    assert runner.invoke(main, ["score", str(tiny_artifact), str(quoted), "-q"]).exit_code == 0


def test_text_before_the_first_fasta_header_is_refused(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.fa"
    source.write_text("\n; a comment\nthe cat\n>seq1\nthe dog\n")
    out = tmp_path / "o.jsonl"
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(out), "--json"])
    assert result.exit_code == 1 and "line 3: a sequence before the first '>' header" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]
    # found before the artifact is even opened: a missing one is not what the error is about
    early = runner.invoke(main, ["score", str(tmp_path / "no-artifact"), str(source), "-q"])
    assert "a sequence before the first '>' header" in early.stderr


def test_csv_columns_are_kept_all_by_default_or_as_chosen(runner: CliRunner, tiny_artifact: Path,
                                                          tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,heavy,donor\nab1,the cat,d7\nab2,the dog,d9\n")
    every = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(source), "--column", "heavy", "-q"]).stdout)
    assert [(r["id"], r["donor"], r["text"]) for r in every] == [("ab1", "d7", "the cat"), ("ab2", "d9", "the dog")]
    assert list(every[0])[:3] == ["id", "donor", "line"]  # the input's columns, then ours
    chosen = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(source), "--column", "heavy",
                                        "--keep-columns", "donor", "-q"]).stdout)
    assert "id" not in chosen[0] and chosen[0]["donor"] == "d7"
    none = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(source), "--column", "heavy",
                                      "--keep-columns", "", "-q"]).stdout)
    assert "id" not in none[0] and "donor" not in none[0]


@pytest.mark.parametrize("header,args,says", [
    ("id,text", ["--keep-columns", "nope"], "has no column 'nope'"),
    ("id,text", ["--keep-columns", "text"], "'text' holds the sequences"),
    ("pll,text", [], "a column named 'pll', which is also a field of the output rows"),
    ("id,text", ["--keep-columns", "id", "--format", "text"], "has no columns to keep"),
])
def test_bad_kept_columns_are_refused_before_any_work(runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
                                                      header: str, args: list[str], says: str) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"{header}\nx,the cat\n")
    out = tmp_path / "o.jsonl"
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(out), *args])
    assert result.exit_code == 1 and says in result.stderr, result.output
    assert not out.exists()


def test_parquet_columns_keep_their_types_and_become_json_values(tiny_artifact: Path, tmp_path: Path) -> None:
    day = datetime.date(2026, 12, 7)
    pq.write_table(pa.table({"text": ["the cat", "the dog"], "donor": [7, 9], "day": [day, day],
                             "titer": [0.5, float("nan")]}), tmp_path / "in.parquet")
    score_file(ScoreJob(tiny_artifact, tmp_path / "in.parquet", tmp_path / "out.parquet"))
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("donor").type == pa.int64() and table.schema.field("day").type == pa.date32()
    assert table.column("donor").to_pylist() == [7, 9]
    score_file(ScoreJob(tiny_artifact, tmp_path / "in.parquet", tmp_path / "out.jsonl"))
    rows = _rows((tmp_path / "out.jsonl").read_text())
    assert [(r["donor"], r["day"], r["titer"]) for r in rows] == [(7, "2026-12-07", 0.5), (9, "2026-12-07", None)]


def test_every_row_and_answer_names_its_variant_and_provider(runner: CliRunner, tiny_variants: Path,
                                                             tmp_path: Path) -> None:
    """The default variant depends on the CPU, and int8 and fp32 PLLs differ: every answer says which ran."""
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\n\nthe dog\n")
    for variant in ("fp32", "int8"):
        rows = _rows(runner.invoke(main, ["score", str(tiny_variants), str(source), "--variant", variant,
                                          "-q"]).stdout)
        assert {(r["variant"], r["provider"]) for r in rows} == {(variant, "CPUExecutionProvider")}  # errors too
    summary = runner.invoke(main, ["score", str(tiny_variants), str(source), "--variant", "int8", "-o",
                                   str(tmp_path / "o.parquet"), "--json"])
    document = json.loads(summary.stdout)
    assert (document["variant"], document["provider"]) == ("int8", "CPUExecutionProvider")
    assert set(pq.read_table(tmp_path / "o.parquet").column("variant").to_pylist()) == {"int8"}
    answer = runner.invoke(main, ["predict", str(tiny_variants), "the [MASK] sat", "--variant", "int8"])
    assert answer.exit_code == 0 and answer.stdout.splitlines()[0] == "(int8 on CPUExecutionProvider)"


def test_mostly_unknown_sequences_are_flagged_and_refused_under_strict(runner: CliRunner, tiny_artifact: Path,
                                                                       tmp_path: Path) -> None:
    """The tiny vocabulary knows 'the cat' but not 'zq' or 'xv': a row over --max-unknown gets a warning
    with counts (scored all the same); --strict refuses it and writes nothing."""
    source = tmp_path / "in.txt"
    source.write_text("the cat sat\nthe zq xv\n" + "z" * 1000 + "\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.output
    rows = _rows((tmp_path / "o.jsonl").read_text())
    assert rows[0]["unknown_tokens"] == 0 and "warning" not in rows[0]
    assert rows[1]["unknown_tokens"] == 2 and rows[1]["pll"] < 0
    assert rows[1]["warning"].startswith("2 of 3 scored tokens are unknown to the model")
    assert "'zq'" in rows[1]["warning"]
    assert rows[2]["warning"].endswith(f"('{'z' * 20}'...)") and len(rows[2]["warning"]) < 200  # not 1000 z's
    assert "line 2: 2 of 3 scored tokens are unknown" in result.stderr
    lenient = runner.invoke(main, ["score", str(tiny_artifact), str(source), "--max-unknown", "0.7", "-q"])
    assert "warning" not in _rows(lenient.stdout)[1]
    strict = runner.invoke(main, ["score", str(tiny_artifact), str(source), "-o", str(tmp_path / "s.jsonl"),
                                  "--strict"])
    assert strict.exit_code == 1 and "more than 10% unknown tokens" in strict.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_odd_files_are_named_for_what_they_are(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    """A gzip or UTF-16 file was read as 'a sequence before the first header'; a FASTA header after blank
    lines in a .txt was scored; files joined with `cat` (a BOM inside) or with CR line ends merged records."""
    import gzip

    (tmp_path / "a.fa").write_bytes(gzip.compress(FASTA.encode()))
    (tmp_path / "b.fa").write_text(FASTA, encoding="utf-16")
    (tmp_path / "c.txt").write_text("\n\n>seq1\nthe cat\n")
    for name, says in (("a.fa", "compressed with gzip"), ("b.fa", "UTF-16 text"),
                       ("c.txt", "line 3 is a FASTA header")):
        result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / name), "-q"])
        assert result.exit_code == 1 and says in result.stderr, (name, result.output)
    (tmp_path / "d.fa").write_bytes(b">s1\rthe cat\r>s2\rthe dog\r" + b">s3\nthe\n" + "\ufeff>s4\na tree\n".encode())
    rows = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "d.fa"), "-q"]).stdout)
    assert [(r["id"], r["text"]) for r in rows] == [("s1", "thecat"), ("s2", "thedog"), ("s3", "the"), ("s4", "atree")]
    assert [r["line"] for r in rows] == [1, 3, 5, 7]  # a lone CR counts as a line end: every record its own line


def test_a_csv_with_both_default_columns_asks_which(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    """`text` was scored silently even when the sequences were in `sequence`."""
    (tmp_path / "in.csv").write_text("sequence,text\nthe cat,1\n")
    result = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), "-q"])
    assert result.exit_code == 1 and "both 'text' and 'sequence'" in result.stderr
    chosen = runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), "--column", "sequence",
                                  "--keep-columns", "", "-q"])
    assert _rows(chosen.stdout)[0]["text"] == "the cat"


def test_a_csv_line_that_is_not_utf8_is_its_rows_error(runner: CliRunner, tiny_artifact: Path, tmp_path: Path) -> None:
    """One bad byte aborted the run, blamed on the header or on a line far from it."""
    lines = [b"id,text"] + [b"%d,the cat" % n for n in range(3000)]
    lines[2500] = b"2499,the ca\xfft"
    (tmp_path / "in.csv").write_bytes(b"\n".join(lines) + b"\n")
    rows = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(tmp_path / "in.csv"), "-q"]).stdout)
    assert len(rows) == 3000 and [r["line"] for r in rows if "error" in r] == [2501]
    assert rows[2499]["error"] == "not UTF-8 text; fix the file's encoding" and rows[2499]["id"] == "2499"


def test_a_uuid_column_is_kept_as_text(tiny_artifact: Path, tmp_path: Path) -> None:
    """A Parquet UUID column ended in 'unexpected TypeError ... This is a bug' in JSON Lines."""
    import uuid

    key = uuid.UUID(int=7)
    pq.write_table(pa.table({"text": ["the cat"], "key": pa.array([key.bytes], pa.uuid())}), tmp_path / "in.parquet")
    score_file(ScoreJob(tiny_artifact, tmp_path / "in.parquet", tmp_path / "out.jsonl"))
    assert _rows((tmp_path / "out.jsonl").read_text())[0]["key"] == str(key)


def test_dash_and_dev_stdout_are_the_real_stdout(tiny_artifact: Path, tmp_path: Path) -> None:
    """The CLI points file descriptor 1 at stderr while a command runs, so `-o /dev/stdout` once sent the
    rows to stderr (and `| wc` counted nothing)."""
    import subprocess
    import sys

    source = tmp_path / "in.txt"
    source.write_text("the cat sat\nthe dog\n")
    for name in ("/dev/stdout", "-"):
        done = subprocess.run([sys.executable, "-m", "mlm_export.cli", "score", str(tiny_artifact), str(source),
                               "-o", name, "-q"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert [r["line"] for r in _rows(done.stdout)] == [1, 2] and '"pll"' not in done.stderr


def test_a_huge_sequence_is_refused_without_tokenizing_it(runner: CliRunner, tiny_artifact: Path,
                                                         tmp_path: Path) -> None:
    """A 100 MB line was tokenized whole (minutes, 15 GB) only to be found too long; a CSV field over 64 MiB
    ended the run. Now both are their row's error, decided on the length in characters."""
    source = tmp_path / "in.csv"
    source.write_text("id,text\na,the cat\nb," + "cat " * 200_000 + "\nc,a tree\n")
    rows = _rows(runner.invoke(main, ["score", str(tiny_artifact), str(source), "-q"]).stdout)
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[0]["pll"] < 0 and rows[2]["pll"] < 0
    assert rows[1]["error"].startswith("the sequence is 800000 characters long")
