"""`mlm-export encode` and `encode_file`: a file of sequences to SPLADE vectors or embeddings, rows in input
order with their kept ids, the variant and provider, bad rows reported, outputs whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlm_export import Embedder, InputError, SparseEncoder
from mlm_export.batch.encoding import EncodeJob, encode_file
from mlm_export.cli import main
from mlm_export.contracts import ROWS, validate

TEXTS = ["the cat sat on the mat .", "a big red dog ran to the house", "blue", "the small tree is not big"]


def _fasta(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(f">seq{i} note {i}\n{t}\n" for i, t in enumerate(texts)))
    return path


def test_sparse_rows_match_the_encoder_in_input_order(tiny_tasks: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS[:2] + [""] + TEXTS[2:] + ["cat " * 80]) + "\n")
    result = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "--variant", "fp32",
                                       "--top-k", "4"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for row in rows:
        validate(row, ROWS["encode"])
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["error"] == "the sequence is empty" and rows[2]["indices"] is None
    assert "64" in rows[5]["error"] and "truncate" in rows[5]["error"]
    encoder = SparseEncoder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    for row, text in zip([rows[i] for i in (0, 1, 3, 4)], TEXTS):
        want = encoder.encode(text, top_k=4)
        assert row["indices"] == want.indices.tolist()
        assert np.allclose(row["values"], want.values, atol=1e-6)
        assert row["variant"] == "sparse.fp32" and row["provider"] == "CPUExecutionProvider"
        assert row["n_tokens"] == len(encoder.tokenizer.encode(text).ids) - 2  # as score counts: CLS, SEP left out
    truncated = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "--truncate"])
    assert json.loads(truncated.stdout.splitlines()[5])["n_tokens"] == 62


def test_embed_to_npy_parquet_and_jsonl_keeps_fasta_ids(tiny_tasks: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    source = _fasta(tmp_path / "in.fa", TEXTS)
    npy, parquet = tmp_path / "e.npy", tmp_path / "e.parquet"
    done = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "embed", "--variant", "fp32",
                                     "-o", str(npy), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["rows"] == summary["encoded"] == 4 and summary["variant"] == "embed.fp32"
    want = Embedder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu").encode([t.replace(" ", "")
                                                                                         for t in TEXTS])
    assert np.allclose(np.load(npy), want, atol=1e-6)  # FASTA joins a record's lines without spaces
    done = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "embed", "--pooling", "none",
                                     "-o", str(parquet)])
    assert done.exit_code == 0, done.output
    table = pq.read_table(parquet).to_pylist()
    assert [r["id"] for r in table] == ["seq0", "seq1", "seq2", "seq3"] and table[0]["description"] == "note 0"
    assert [len(r["embedding"]) for r in table] == [r["n_tokens"] for r in table]  # CLS and SEP left out


def test_outputs_are_never_half_written_or_overwritten(tiny_tasks: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS + [""]) + "\n")
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("keep me\n")
    refused = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "-o", str(theirs)])
    assert refused.exit_code != 0 and theirs.read_text() == "keep me\n"
    strict = tmp_path / "strict.jsonl"
    stopped = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "-o", str(strict),
                                        "--strict"])
    assert stopped.exit_code == 1 and "line 5" in stopped.output and "--strict" in stopped.output
    assert not strict.exists() and not list(tmp_path.glob(".strict*"))
    sparse_npy = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "-o",
                                           str(tmp_path / "s.npy")])
    assert sparse_npy.exit_code == 1 and "a .npy output holds one pooled vector per row" in sparse_npy.output


def test_the_task_is_the_artifacts_when_it_has_one(tiny_tasks: Path, tiny_artifact: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("the cat\n")
    both = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source)])
    assert both.exit_code == 1 and "both a sparse and an embed graph: say which with --task" in both.output
    none = CliRunner().invoke(main, ["encode", str(tiny_artifact), str(source), "--json"])
    assert none.exit_code == 1 and "export it with --task sparse or --task embed" in json.loads(none.stdout)["error"][
        "message"]
    with pytest.raises(InputError, match="top_k and threshold are the sparse task's"):
        encode_file(EncodeJob(tiny_tasks, source, "embed", tmp_path / "x.jsonl", top_k=3))
    with pytest.raises(InputError, match="pooling is the embed task's"):
        encode_file(EncodeJob(tiny_tasks, source, "sparse", tmp_path / "x.jsonl", pooling="mean"))
    assert not (tmp_path / "x.jsonl").exists()


def test_a_slim_copy_without_the_task_says_so(tiny_tasks: Path, tmp_path: Path) -> None:
    slim = CliRunner().invoke(main, ["slim", str(tiny_tasks), "--keep", "sparse.int8", "--out", str(tmp_path / "s")])
    assert slim.exit_code == 0, slim.output
    assert SparseEncoder.from_pretrained(tmp_path / "s", providers="cpu").variant == "sparse.int8"
    with pytest.raises(Exception, match=r"slim copy that left out its embed graphs \(embed.fp16, embed.fp32"):
        Embedder.from_pretrained(tmp_path / "s", providers="cpu")


def test_h5_keys_each_embedding_by_its_record_id(tiny_tasks: Path, tmp_path: Path) -> None:
    import h5py

    source = _fasta(tmp_path / "in.fa", TEXTS)
    out = tmp_path / "e.h5"
    done = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "embed", "--variant", "fp32",
                                     "--pooling", "none", "-o", str(out)])
    assert done.exit_code == 0, done.output
    embedder = Embedder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    with h5py.File(out) as f:
        assert sorted(f) == ["seq0", "seq1", "seq2", "seq3"] and f.attrs["variant"] == "embed.fp32"
        for i, text in enumerate(TEXTS):
            want = embedder.encode(text.replace(" ", ""), pooling="none")
            assert np.allclose(f[f"seq{i}"][()], want, atol=1e-6) and f[f"seq{i}"].attrs["line"] == 2 * i + 1
    twice = tmp_path / "twice.fa"
    twice.write_text(">a\nthe cat\n>b\na dog\n>a\nthe mat\n")
    refused = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(twice), "--task", "embed", "-o",
                                        str(tmp_path / "t.h5")])
    assert refused.exit_code == 1 and "the id 'a' is the one of line 1" in refused.output
    assert not list(tmp_path.glob("*t.h5*"))  # nothing half-written, under either name


def test_the_ray_engine_gives_the_local_engines_rows(tiny_tasks: Path, tmp_path: Path) -> None:
    """One local Ray instance, one actor: the same rows, ids and errors as the local engine, in input order."""
    source = _fasta(tmp_path / "in.fa", TEXTS + [""] + TEXTS)
    rows = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        done = CliRunner().invoke(main, ["encode", str(tiny_tasks), str(source), "--task", "sparse", "--variant",
                                         "fp32", "--engine", engine, "--workers", "1", "-o", str(out), "-q", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["engine"] == engine
        rows[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows["ray"]) == len(TEXTS) * 2 + 1
    for got, want in zip(rows["ray"], rows["local"]):
        assert {k: v for k, v in got.items() if k != "values"} == {k: v for k, v in want.items() if k != "values"}
        assert (got["values"] is None) == (want["values"] is None)
        if want["values"] is not None:
            assert np.allclose(got["values"], want["values"], rtol=1e-5, atol=1e-6)
