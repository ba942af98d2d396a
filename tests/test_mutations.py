"""Mutation effects (`OnnxMaskFiller.score_variants`, `mlm-export variants`): masked and wild-type marginals
against PyTorch on AntiBERTy, PLL delta against two PLLs, the table the CLI writes, and every refusal."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mlm_export import ArtifactError, InputError, OnnxMaskFiller
from mlm_export.cli import main
from mlm_export.verify import antibody_sequences

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def fp32(antiberty_export):  # type: ignore[no-untyped-def]
    return OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="fp32")


def chain(length: int = 40) -> str:
    return antibody_sequences()[0][:length]


def random_mutants(wt: str, count: int, seed: int) -> list[str]:
    """A third each single, double and triple mutants, at distinct positions (1-based)."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        positions = sorted(rng.sample(range(len(wt)), k % 3 + 1))
        out.append(":".join(f"{wt[p]}{p + 1}{rng.choice([a for a in AMINO_ACIDS if a != wt[p]])}" for p in positions))
    return out


def torch_tables(antiberty_torch: Any, wt: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """esm's predict.py formulas in PyTorch: log-softmax over the vocabulary at each position masked in its own
    copy (masked), and at every position of one unmasked pass (wild type); [L, vocab] each."""
    import torch

    model, tokenizer = antiberty_torch
    ids = tokenizer(wt, return_tensors="pt")["input_ids"]
    n = ids.shape[1] - 2
    copies = ids.repeat(n, 1)
    copies[torch.arange(n), torch.arange(n) + 1] = tokenizer.mask_token_id
    with torch.no_grad():
        masked = torch.log_softmax(model(input_ids=copies).logits, -1)[torch.arange(n), torch.arange(n) + 1]
        unmasked = torch.log_softmax(model(input_ids=ids).logits, -1)[0, 1:-1]
    return masked.numpy(), unmasked.numpy(), tokenizer.get_vocab()


def reference(table: np.ndarray, vocab: dict[str, int], mutant: str) -> float:
    total = 0.0
    for part in mutant.split(":"):
        index = int(part[1:-1]) - 1
        total += float(table[index, vocab[part[-1]]] - table[index, vocab[part[0]]])
    return total


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(v))) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def test_fp32_marginals_equal_pytorch_on_single_double_and_triple_mutants(fp32, antiberty_torch) -> None:  # type: ignore[no-untyped-def]
    wt = chain()
    masked, unmasked, vocab = torch_tables(antiberty_torch, wt)
    mutants = random_mutants(wt, 30, seed=0)
    filler = fp32
    for method, table in (("masked-marginal", masked), ("wt-marginal", unmasked)):
        got = filler.score_variants(wt, mutants, method=method)
        want = [reference(table, vocab, m) for m in mutants]
        assert np.abs(np.array(got) - want).max() < 1e-3, method
        assert len({round(v, 3) for v in got}) > 25  # distinct scores: nothing collapsed to a constant


def test_offset_shifts_positions_and_a_string_is_one_variant(antiberty_export, fp32) -> None:  # type: ignore[no-untyped-def]
    wt = chain(30)
    filler = fp32
    one_based = filler.score_variants(wt, f"{wt[4]}5A:{wt[9]}10W")
    zero_based = filler.score_variants(wt, [f"{wt[4]}4A:{wt[9]}9W"], offset=0)
    singles = filler.score_variants(wt, [f"{wt[4]}5A", f"{wt[9]}10W"])
    assert one_based == pytest.approx(zero_based, abs=1e-9) and len(one_based) == 1
    assert one_based[0] == pytest.approx(sum(singles), abs=1e-6)  # marginals add over positions


@pytest.mark.parametrize("variant", ["int8", "bf16"])
def test_reduced_variants_rank_mutants_like_fp32(antiberty_export, fp32, variant: str) -> None:  # type: ignore[no-untyped-def]
    from mlm_export.runtime.openvino import cpu_has_bf16

    if variant == "bf16" and not cpu_has_bf16():
        pytest.skip("bf16 runs on a CPU with AVX-512 BF16 or AMX (the export made none here)")
    wt = chain(60)  # a table costs L^2: 60 positions x 19 letters still leave 210 distinct variants
    mutants = random_mutants(wt, 210, seed=1)
    reference = fp32.score_variants(wt, mutants)
    reduced = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant=variant,
                                             providers="openvino" if variant == "bf16" else "cpu")
    assert spearman(reduced.score_variants(wt, mutants), reference) >= 0.99


def test_pll_delta_is_the_mutants_pll_minus_the_wild_types(antiberty_export, fp32) -> None:  # type: ignore[no-untyped-def]
    wt = chain(24)
    filler = fp32
    mutants = [f"{wt[2]}3A", f"{wt[5]}6W:{wt[10]}11G"]
    deltas = filler.score_variants(wt, mutants, method="pll-delta")
    texts = [wt[:2] + "A" + wt[3:], wt[:5] + "W" + wt[6:10] + "G" + wt[11:]]
    base = filler.score(wt).pll
    assert deltas == pytest.approx([filler.score(t).pll - base for t in texts], abs=1e-4)


@pytest.mark.parametrize(("mutation", "message"), [
    ("A1G", "the wild type has 'E' at position 1, not 'A'"),
    ("E0A", "position 0 is outside the sequence (positions 1 to 30"),
    ("E31A", "position 31 is outside the sequence"),
    ("E1B", "'B' is not in the alphabet (ACDEFGHIKLMNPQRSTVWY)"),
    ("E1", "is not a substitution such as 'A23G'"),
    ("1EA", "is not a substitution"),
    ("E1A:E1C", "position 1 is mutated twice"),
    ("E1A::V2A", "a substitution is empty"),
    ("", "the mutation is empty"),
])
def test_an_invalid_mutation_is_named_before_anything_runs(fp32, mutation: str, message: str) -> None:  # type: ignore[no-untyped-def]
    wt = chain(30)
    assert wt.startswith("EV")
    filler = fp32
    with pytest.raises(InputError, match="invalid mutation") as caught:
        filler.score_variants(wt, ["V2A", mutation])
    assert message in str(caught.value) and repr(mutation) in str(caught.value)


def test_bad_arguments_are_input_errors(antiberty_export, fp32) -> None:  # type: ignore[no-untyped-def]
    filler = fp32
    wt = chain(30)
    for kwargs, match in (({"method": "esm"}, "method must be one of"), ({"offset": 1.5}, "offset must be an integer"),
                          ({"alphabet": "AZ"}, "alphabet's 'Z' is not an ordinary token"),
                          ({"alphabet": ["A", "[MASK]"]}, "not an ordinary token"),
                          ({"batch_size": 0}, "batch_size")):
        with pytest.raises(InputError, match=match):
            filler.score_variants(wt, ["V2A"], **kwargs)
    with pytest.raises(InputError, match="no mutations"):
        filler.score_variants(wt, [])
    with pytest.raises(InputError, match="holds the mask token"):
        filler.score_variants(wt[:5] + "[MASK]" + wt[6:], ["V2A"])
    assert filler.score_variants(wt, ["V2A"], alphabet="AC") == filler.score_variants(wt, ["V2A"])


# --- the command ---

def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["variants", *args])


def test_dms_table_keeps_every_column_and_row_and_adds_one_column_per_method(antiberty_export, fp32,  # type: ignore[no-untyped-def]
                                                                             tmp_path: Path) -> None:
    wt = chain(20)
    mutants = random_mutants(wt, 6, seed=2)
    dms = tmp_path / "dms.csv"
    rows = [["mutant", "DMS_score", "note"]] + [[m, f"{k / 10:.2f}", "a, b" if k == 1 else ""]
                                                for k, m in enumerate(mutants)]
    with open(dms, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "scores.csv"
    result = run(str(antiberty_export.path), "--wt", wt, "--dms", str(dms), "--method", "masked-marginal,wt-marginal",
                 "--method", "pll-delta", "--variant", "fp32", "-o", str(out), "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 6 and summary["variant"] == "fp32" and summary["copies"] == 20 + 20 * 7
    with open(out, newline="") as fh:
        written = list(csv.reader(fh))
    assert written[0] == rows[0] + ["masked_marginal", "wt_marginal", "pll_delta", "variant", "provider"]
    assert [r[:3] for r in written[1:]] == rows[1:]  # the input's text, unchanged, in order
    filler = fp32
    expected = filler.score_variants(wt, mutants, method="wt-marginal")
    assert [float(r[4]) for r in written[1:]] == pytest.approx(expected, abs=1e-6)
    assert {(r[6], r[7]) for r in written[1:]} == {("fp32", "CPUExecutionProvider")}
    parquet = tmp_path / "scores.parquet"
    assert run(str(antiberty_export.path), "--wt", wt, "--dms", str(dms), "--variant", "fp32", "-o", str(parquet),
               "-q").exit_code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert table.column_names == ["mutant", "DMS_score", "note", "masked_marginal", "variant", "provider"]
    assert table.column("mutant").to_pylist() == mutants


def test_saturation_scans_every_position_by_every_other_letter(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wt = chain(11) + "X"  # a residue the vocabulary lacks: every alphabet letter is a substitution there
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(f">heavy1 a chain\n{wt[:6]}\n{wt[6:]}\n")
    out = tmp_path / "scan.csv"
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--saturation", "--variant", "int8",
                 "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 11 * 19 + 20
    assert list(rows[0]) == ["id", "mutant", "position", "wt", "mt", "masked_marginal", "variant", "provider"]
    assert rows[0]["mutant"] == f"{wt[0]}1A" or rows[0]["mutant"] == f"{wt[0]}1C"
    assert {r["id"] for r in rows} == {"heavy1"} and rows[-1]["mutant"] == "X12Y"
    assert all(r["wt"] != r["mt"] for r in rows)
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="int8")
    some = rows[::37]
    assert [float(r["masked_marginal"]) for r in some] == pytest.approx(
        filler.score_variants(wt, [r["mutant"] for r in some]), abs=1e-6)


def test_several_wild_types_each_take_the_rows_that_name_them(antiberty_export, fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = antibody_sequences()[0][:20], antibody_sequences()[1][:20]
    fasta = tmp_path / "wts.fa"
    fasta.write_text(f">a\n{a}\n>b\n{b}\n")
    dms = tmp_path / "dms.csv"
    dms.write_text(f"id,mutant\nb,{b[3]}4A\na,{a[3]}4A\nb,{b[0]}1W\n")
    out = tmp_path / "out.csv"
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--dms", str(dms), "--variant", "fp32",
                 "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    filler = fp32
    want = [filler.score_variants(b, f"{b[3]}4A")[0], filler.score_variants(a, f"{a[3]}4A")[0],
            filler.score_variants(b, f"{b[0]}1W")[0]]
    with open(out, newline="") as fh:
        got = [float(r["masked_marginal"]) for r in csv.DictReader(fh)]
    assert got == pytest.approx(want, abs=1e-6)
    dms.write_text(f"mutant\n{a[3]}4A\n")
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--dms", str(dms), "-o", str(tmp_path / "x.csv"))
    assert result.exit_code == 1 and "needs a column 'id' (--record-col)" in result.output
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--mutations", f"{a[3]}4A",
                 "-o", str(tmp_path / "x.csv"))
    assert result.exit_code == 1 and "holds 2 records" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_a_wrong_wild_type_letter_stops_the_run_and_writes_nothing(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wt = chain(30)
    dms = tmp_path / "dms.csv"
    dms.write_text(f"mutant,score\n{wt[1]}2A,1\nW3A,2\n{wt[4]}5C,3\n")
    out = tmp_path / "out.csv"
    result = run(str(antiberty_export.path), "--wt", wt, "--dms", str(dms), "-o", str(out), "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "InputError" and "row 2 (line 3): 'W3A'" in error["message"]
    assert f"the wild type has {wt[2]!r} at position 3" in error["message"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dms.csv"]
    out.write_text("mine")  # an existing output is the user's: refused without --force
    result = run(str(antiberty_export.path), "--wt", wt, "--mutations", f"{wt[1]}2A", "-o", str(out))
    assert result.exit_code == 1 and "exists; pass --force" in result.output and out.read_text() == "mine"


@pytest.mark.parametrize(("args", "message"), [
    (["--mutations", "V2A"], "exactly one of --wt and --wt-fasta"),
    (["--wt", "EVQL", "--wt-fasta", "x.fa", "--mutations", "V2A"], "exactly one of --wt and --wt-fasta"),
    (["--wt", "EVQL"], "exactly one of --mutations, --dms and --saturation"),
    (["--wt", "EVQL", "--mutations", "V2A", "--saturation"], "exactly one of --mutations, --dms and --saturation"),
    (["--wt", "EVQL", "--mutations", "V2A", "--method", "esm1v"], "'esm1v' is not one of"),
    (["--wt", "", "--mutations", "V2A"], "--wt: the sequence is empty"),
    (["--wt", "EVQL", "--dms", "missing.csv"], "is not a file"),
])
def test_the_command_refuses_what_it_cannot_run(antiberty_export, tmp_path: Path, args: list[str],  # type: ignore[no-untyped-def]
                                                message: str) -> None:
    result = run(str(antiberty_export.path), *args, "-o", str(tmp_path / "out.csv"))
    usage = "exactly one of" in message or "is not one of" in message
    assert result.exit_code == (2 if usage else 1) and message in result.output
    assert not (tmp_path / "out.csv").exists()


def test_dms_columns_are_checked(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dms = tmp_path / "dms.csv"
    for text, message in (("variant,x\nV2A,1\n", "has no column 'mutant'"),
                          ("mutant,masked_marginal\nV2A,1\n", "a column named 'masked_marginal'"),
                          ("mutant\n", "a header and no rows"),
                          ("mutant,x\nV2A\n", "line 2 has 1 fields")):
        dms.write_text(text)
        result = run(str(antiberty_export.path), "--wt", "EVQL", "--dms", str(dms), "-o", str(tmp_path / "o.csv"))
        assert result.exit_code == 1 and message in result.output, (text, result.output)
    dms.write_text("mut\nV2A\n")
    result = run(str(antiberty_export.path), "--wt", "EVQL", "--dms", str(dms), "--mutation-col", "mut",
                 "-o", str(tmp_path / "o.csv"), "-q")
    assert result.exit_code == 0, result.output


def test_a_word_vocabulary_substitutes_whole_tokens(english_artifact: Path) -> None:
    """On a WordPiece vocabulary a mutation is a token substitution at a token position."""
    filler = OnnxMaskFiller.from_pretrained(english_artifact, variant="fp32")
    text = "the cat sat on the mat"
    scores = filler.score_variants(text, ["cat2dog", "the1a:mat6rug"])
    assert len(scores) == 2 and all(np.isfinite(scores))
    with pytest.raises(InputError, match="the wild type has 'cat' at position 2, not 'dog'"):
        filler.score_variants(text, ["dog2cat"])
    with pytest.raises(InputError, match="not in the alphabet"):
        filler.score_variants(text, ["cat2zzqx"])
    assert filler.score_variants(text, ["cat2dog"], alphabet=["dog", "bird"]) == scores[:1]


def test_wild_type_marginals_read_the_heads_rows_at_unmasked_positions_and_are_gated(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    for name, graph in antiberty_export.manifest.graphs.items():
        if graph.form == "fill-mask":
            assert "score_positions" in graph.input_names
            unmasked = graph.parity["unmasked"]
            assert unmasked["positions"] > 0 and graph.parity["passed"], name


def test_a_graph_that_ignores_score_positions_fails_its_gate(tiny_dir: Path, tiny_artifact: Path,
                                                             tmp_path: Path) -> None:
    """The gate can fail: the head's rows at unmasked positions are checked, not assumed."""
    import onnx
    from transformers import BertForMaskedLM

    from mlm_export.artifact.handle import Artifact
    from mlm_export.verify.parity import ParityHarness

    graph = onnx.load(str(tiny_artifact / "fill_mask.fp32.onnx"))
    (or_node,) = [n for n in graph.graph.node if n.op_type == "Or"]
    for node in graph.graph.node:  # the head's rows from the masks alone
        node.input[:] = [or_node.input[0] if name == or_node.output[0] else name for name in node.input]
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    artifact = Artifact.open(tiny_artifact)
    harness = ParityHarness(artifact.manifest, artifact.tokenizer(), BertForMaskedLM.from_pretrained(tiny_dir))
    entry = artifact.manifest.graphs["fp32"]
    assert harness.check(tiny_artifact / "fill_mask.fp32.onnx", "fp32", entry).passed
    failed = harness.check(broken, "fp32", entry)
    assert not failed.passed
    assert any("graph ran its head at" in f or "failed to run" in f for f in failed.failures), failed.failures


def test_an_artifact_without_score_positions_still_scores_masked_marginals(tiny_artifact: Path, tmp_path: Path) -> None:
    """An artifact of format 5 (no `score_positions`): masked marginals work; wild-type marginals say to re-export."""
    import onnx
    from onnx import numpy_helper

    from mlm_export.artifact import sha256_file
    from mlm_export.manifest import MANIFEST

    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "old"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = 5
    for entry in manifest["graphs"].values():
        if entry["form"] != "fill-mask":
            continue
        path = copy / entry["file"]
        graph = onnx.load(str(path))  # the input as a constant: the graph a format-5 export wrote
        (kept,) = [i for i in graph.graph.input if i.name == "score_positions"]
        graph.graph.input.remove(kept)
        graph.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1), dtype=bool), "score_positions"))
        onnx.save(graph, str(path))
        entry["inputs"] = [i for i in entry["inputs"] if i["name"] != "score_positions"]
        manifest["files"][entry["file"]] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    filler = OnnxMaskFiller.from_pretrained(copy, variant="fp32")
    new = OnnxMaskFiller.from_pretrained(tiny_artifact, variant="fp32")
    text = "the cat sat on the mat"
    assert filler.score_variants(text, ["cat2dog"]) == pytest.approx(new.score_variants(text, ["cat2dog"]), abs=1e-6)
    with pytest.raises(ArtifactError, match="no score_positions input.*re-export the artifact"):
        filler.score_variants(text, ["cat2dog"], method="wt-marginal")


def test_a_variants_int8_score_does_not_depend_on_the_other_variants(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    """The table covers every position whatever the list: int8's per-run activation scales see the same runs."""
    wt = chain(60)
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="int8")
    alone = filler.score_variants(wt, [f"{wt[4]}5A"])
    among = filler.score_variants(wt, random_mutants(wt, 40, seed=3) + [f"{wt[4]}5A"])
    assert alone[0] == among[-1]


def test_a_mostly_unknown_wild_type_warns_and_offsets_are_checked(antiberty_export, fp32) -> None:  # type: ignore[no-untyped-def]
    filler = fp32
    with pytest.warns(UserWarning, match="unknown to the model.*upper-case the sequences"):
        filler.score_variants(chain(20).lower(), ["e1Q"])
    for offset in (-1, 10**10):
        with pytest.raises(InputError, match="offset must be from 0"):
            filler.score_variants(chain(20), ["E1Q"], offset=offset)
    with pytest.raises(InputError, match="is not a substitution"):  # a full-width digit is not a position
        filler.score_variants(chain(20), ["E\uff11Q"])


def test_table_types_survive_and_a_csv_position_column_stays_text(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    wt = chain(20)
    csv_in = tmp_path / "dms.csv"
    csv_in.write_text(f"mutant,position\n{wt[0]}1A,1\n{wt[7]}8W,08\n")
    out = tmp_path / "from-csv.parquet"
    assert run(str(antiberty_export.path), "--wt", wt, "--dms", str(csv_in), "-o", str(out), "-q").exit_code == 0
    assert pq.read_table(out).column("position").to_pylist() == ["1", "08"]  # as the file spells them
    parquet_in = tmp_path / "dms.parquet"
    pq.write_table(pa.table({"mutant": [f"{wt[0]}1A", f"{wt[7]}8W"], "n": pa.array([3, 4], pa.int16())}), parquet_in)
    out = tmp_path / "from-parquet.parquet"
    result = run(str(antiberty_export.path), "--wt", wt, "--dms", str(parquet_in), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("n").type == pa.int16() and table.column("n").to_pylist() == [3, 4]
    out.write_text("mine")
    result = run(str(antiberty_export.path), "--wt", wt, "--dms", str(parquet_in), "-o", str(out), "--force", "-q")
    assert result.exit_code == 0 and pq.read_table(out).num_rows == 2  # --force replaces it
    pq.write_table(pa.table({"mutant": pa.array([], pa.string())}), parquet_in)
    result = run(str(antiberty_export.path), "--wt", wt, "--dms", str(parquet_in), "-o", str(tmp_path / "e.csv"))
    assert result.exit_code == 1 and "has no rows" in result.output


def test_records_rows_do_not_name_are_not_read_and_each_record_is_scanned(antiberty_export, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = chain(8), antibody_sequences()[1][:6]
    fasta = tmp_path / "wts.fa"
    fasta.write_text(f">a\n{a}\n>long\n{'A' * 600}\n")
    dms = tmp_path / "dms.csv"
    dms.write_text(f"id,mutant\na,{a[0]}1W\n")
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--dms", str(dms), "-o", str(tmp_path / "o.csv"))
    assert result.exit_code == 0, result.output  # the 600-residue record is too long, and no row names it
    dms.write_text("id,mutant\nlong,A1W\n")
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--dms", str(dms), "-o", str(tmp_path / "p.csv"))
    assert result.exit_code == 1 and "record 'long': the sequence is 602 tokens long" in result.output
    fasta.write_text(f">a\n{a}\n>b\n{b}\n")
    out = tmp_path / "scan.csv"
    result = run(str(antiberty_export.path), "--wt-fasta", str(fasta), "--saturation", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["a"] * 8 * 19 + ["b"] * 6 * 19


def test_unmasked_rows_are_held_to_the_logit_bound_on_their_own() -> None:
    from mlm_export.manifest import Tolerance
    from mlm_export.verify.parity import GraphParity

    ref = np.array([[5.0, 1.0, 0.0], [4.0, 0.0, 1.0]])
    top = np.array([[0, 1], [0, 2]])
    parity = GraphParity("fp32", "f.onnx", "fill-mask", Tolerance(max_abs_logit=1e-3, top_k=2))
    parity.add("shapes", ref, top, np.full((2, 2), 1e-5), np.zeros((2, 2)))
    parity.add("shapes", ref * 10, top, np.full((2, 2), 1e-5), np.zeros((2, 2)), unmasked=True)
    assert parity.passed and parity.to_dict()["unmasked"]["positions"] == 2
    parity.add("shapes", ref, top, np.full((2, 2), 0.5), np.zeros((2, 2)), unmasked=True)
    assert parity.failures == ["at unmasked positions: max |Δlogit| 0.5 > 0.001"]
