"""The real trained AntiBERTy checkpoint: fp32 parity on real antibody sequences."""

from __future__ import annotations

import pytest

from mlm_export import OnnxMaskFiller
from mlm_export.verify import antibody_sequences

TRASTUZUMAB_VH = antibody_sequences()[0]


def test_export_passes_parity_with_identical_top5(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    manifest = antiberty_export.manifest.to_dict()
    for name in ("logits", "fp32"):
        parity = manifest["graphs"][name]["parity"]
        assert parity["passed"], parity
        # the logits form is checked on the synthetic shapes, the fused graph on every probe
        assert parity["masked_positions"] >= (50 if name == "logits" else 300)
        assert parity["gated_on"] == ("shapes" if name == "logits" else "all")
        assert parity["max_abs_logit"] <= 1e-4
        assert parity["topk_set_equal"] == 1.0 and parity["top1_agreement"] == 1.0
    fusion = manifest["graphs"]["fp32"]["fusion"]
    assert fusion["attention"] == fusion["expected_attention"] == 8


def test_fill_mask_file_is_not_bigger_than_the_weights(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    manifest = antiberty_export.manifest.to_dict()
    assert manifest["files"]["fill_mask.fp32.onnx"]["size"] <= 1.05 * manifest["model"]["float32_parameter_bytes"]


@pytest.mark.parametrize("residue_index", [21, 95])  # the two conserved cysteines of a VH domain
def test_trained_head_recovers_conserved_cysteines(antiberty_export, residue_index: int) -> None:  # type: ignore[no-untyped-def]
    assert TRASTUZUMAB_VH[residue_index] == "C"
    masked = TRASTUZUMAB_VH[:residue_index] + "[MASK]" + TRASTUZUMAB_VH[residue_index + 1 :]
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path)
    best = filler(masked, top_k=3)[0]
    assert best["token_str"] == "C" and best["score"] > 0.9
    assert best["sequence"] == TRASTUZUMAB_VH


def test_predictor_matches_transformers_pipeline_on_antibodies(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertForMaskedLM, PreTrainedTokenizerFast, pipeline

    from mlm_export.exporter.source import resolve

    model = BertForMaskedLM.from_pretrained(resolve("antiberty").model_dir).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(antiberty_export.path)
    reference = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="fp32")
    for seq in antibody_sequences()[:6]:
        masked = seq[:40] + "[MASK]" + seq[41:]
        got, expected = filler(masked, top_k=5), reference(masked, top_k=5)
        assert [c["token_str"] for c in got] == [c["token_str"] for c in expected]
        assert [c["score"] for c in got] == pytest.approx([c["score"] for c in expected], abs=1e-5)


def test_a_lower_case_chain_is_flagged_with_the_fix(antiberty_export, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A lower-case heavy chain is all [UNK] to AntiBERTy's upper-case vocabulary: it was scored (mean PLL
    about -26) with no word of warning. Now its row and the summary say so, and say how to fix it."""
    import json

    from mlm_export.batch import ScoreJob, score_file

    source = tmp_path / "chains.fa"
    chain = TRASTUZUMAB_VH[:40]  # a PLL costs a pass per residue: the first 40 show it
    source.write_text(f">upper\n{chain}\n>lower\n{chain.lower()}\n")
    summary = score_file(ScoreJob(antiberty_export.path, source, tmp_path / "o.jsonl", variant="fp32"))
    upper, lower = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert (upper["id"], lower["id"]) == ("upper", "lower")
    assert upper["unknown_tokens"] == 0 and "warning" not in upper
    assert lower["unknown_tokens"] == lower["n_tokens"] == len(chain)
    assert "upper-case the sequences" in lower["warning"] and lower["pll"] < upper["pll"]
    assert summary.warned == [(3, lower["warning"])] and summary.scored == 2
