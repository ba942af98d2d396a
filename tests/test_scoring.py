"""Scoring: `targets=` against transformers' pipeline, and pseudo-log-likelihood against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mlm_export import InputError, OnnxMaskFiller
from mlm_export.runtime.scoring import PLLScore
from mlm_export.verify import antibody_sequences


def _torch_pll(model, tokenizer, text: str, exclude_special: bool) -> list[float]:  # type: ignore[no-untyped-def]
    """The textbook PLL: mask each non-special token in its own copy, log-softmax over the full logits."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    special = set(tokenizer.all_special_ids)
    positions = [i for i, t in enumerate(ids.tolist()) if t not in special]
    copies = ids.repeat(len(positions), 1)
    copies[torch.arange(len(positions)), positions] = tokenizer.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=copies, attention_mask=torch.ones_like(copies)).logits.double()
    logits = logits[torch.arange(len(positions)), positions]
    if exclude_special:
        logits[:, sorted(special)] = -float("inf")
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs[torch.arange(len(positions)), ids[positions]].tolist()


def test_fp32_pll_equals_pytorch_on_antibodies(antiberty_export, antiberty_torch) -> None:  # type: ignore[no-untyped-def]
    """The first 40 residues of three probe chains (PLL costs length squared: the suite's budget)."""
    model, tokenizer = antiberty_torch
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="fp32")
    texts = [" ".join(seq[:40]) for seq in antibody_sequences()[:3]]
    for exclude_special in (False, True):
        summed = filler.score(texts, exclude_special=exclude_special, per_token=True, batch_size=20)
        mean = filler.score(texts, reduction="mean", exclude_special=exclude_special)
        for text, got, got_mean in zip(texts, summed, mean):
            want = _torch_pll(model, tokenizer, text, exclude_special)
            assert got.n_tokens == got_mean.n_tokens == len(want) == len(text.split())
            np.testing.assert_allclose(got.token_log_probs, want, atol=1e-4)
            assert got.pll == pytest.approx(sum(want), abs=1e-4 * len(want))
            assert got_mean.pll == pytest.approx(sum(want) / len(want), abs=1e-4)


def test_pll_equals_antibertys_own_runner(antiberty_export) -> None:  # type: ignore[no-untyped-def]
    """AntiBERTyRunner.pseudo_log_likelihood: mean over residues, softmax without special tokens."""
    from antiberty import AntiBERTyRunner

    sequences = [seq[:40] for seq in antibody_sequences()[:2]]
    reference = AntiBERTyRunner().pseudo_log_likelihood(sequences, batch_size=64).tolist()
    filler = OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="fp32")
    got = [s.pll for s in filler.score([" ".join(s) for s in sequences], reduction="mean", exclude_special=True)]
    np.testing.assert_allclose(got, reference, atol=1e-4)


@pytest.mark.parametrize("variant", ["int8", "bf16"])
def test_reduced_precision_pll_ranks_point_mutants_like_fp32(antiberty_export, variant: str) -> None:  # type: ignore[no-untyped-def]
    if variant not in antiberty_export.manifest.graphs:  # bf16 is exported only where the CPU computes in it
        pytest.skip("this CPU has no bf16, so the fixture has no bf16 variant")
    parent = antibody_sequences()[0][:36]
    mutants = [parent[:i] + aa + parent[i + 1:] for i, aa in zip(range(2, 36, 4), "WPGDKRAYL")]
    texts = [" ".join(s) for s in [parent, *mutants]]
    fp32 = [s.pll for s in OnnxMaskFiller.from_pretrained(antiberty_export.path, variant="fp32").score(texts)]
    reduced = [s.pll for s in OnnxMaskFiller.from_pretrained(
        antiberty_export.path, variant=variant, providers="openvino" if variant == "bf16" else "cpu").score(texts)]
    ranks = [np.argsort(np.argsort(v)) for v in (fp32, reduced)]
    assert np.corrcoef(*ranks)[0, 1] >= 0.95  # Spearman's rho (no ties)


def test_a_score_depends_on_its_sequence_alone(tiny_artifact: Path) -> None:
    """Chunking the copies or scoring alongside other texts changes nothing: the engines rely on it."""
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact, variant="fp32")
    text = "the big red dog ran to the small house and the cat sat on the mat ."
    alone = filler.score(text, per_token=True)
    chunked = filler.score([text, "a cat"], per_token=True, batch_size=3)[0]
    assert alone == chunked and isinstance(alone, PLLScore)
    assert alone.n_tokens == 17 and len(alone.token_log_probs) == 17


@pytest.mark.parametrize("text,says", [
    ("", "empty"),
    ("the [MASK] sat", "holds the mask token"),
    (" ".join(["cat"] * 70), "tokens long"),
])
def test_a_text_that_cannot_be_scored_is_refused(tiny_artifact: Path, text: str, says: str) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    with pytest.raises(InputError, match=says):
        filler.score(["a cat", text])


def test_unknown_characters_have_no_probability_without_special_tokens(tiny_artifact: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    assert filler.score("the cat é").n_tokens == 3  # [UNK] is scored like any token by default
    with pytest.raises(InputError, match="characters the vocabulary lacks \\('é'\\)"):
        filler.score("the cat é", exclude_special=True)


@pytest.mark.parametrize("option,value", [("reduction", "max"), ("batch_size", 0), ("exclude_special", "yes")])
def test_bad_scoring_options_are_input_errors(tiny_artifact: Path, option: str, value: object) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    with pytest.raises(InputError, match=option):
        filler.score("a cat", **{option: value})


# --- targets=, as transformers' fill-mask pipeline gives them ---

@pytest.fixture(scope="module")
def english_pipeline(english_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer, BertForMaskedLM, pipeline

    model = BertForMaskedLM.from_pretrained(english_dir).eval()
    return pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(english_dir), device="cpu")


@pytest.mark.parametrize("targets,top_k,warns", [
    (["cat", "dog", "house", "tree"], 5, False),  # fewer targets than top_k: as many candidates as targets
    (["cat", "dog", "house", "tree"], 2, False),
    ("paris", 3, False),                           # a single string
    (["Dog", "cat", "cat"], 5, True),              # not in the (uncased) vocabulary as given; duplicates
    (["housekeeping", "the"], 5, True),            # several word pieces: the first is used
])
def test_targets_equal_the_pipeline(english_artifact: Path, english_pipeline, targets, top_k: int,  # type: ignore[no-untyped-def]
                                    warns: bool) -> None:
    filler = OnnxMaskFiller.from_pretrained(english_artifact, variant="fp32")
    text = "the [MASK] sat on the mat."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = filler(text, targets=targets, top_k=top_k)
    assert bool([w for w in caught if "not in the model's vocabulary" in str(w.message)]) == warns
    want = english_pipeline(text, targets=targets, top_k=top_k)
    assert [c["token"] for c in got] == [c["token"] for c in want]
    assert [c["token_str"] for c in got] == [c["token_str"] for c in want]
    assert [c["sequence"] for c in got] == [c["sequence"] for c in want]
    np.testing.assert_allclose([c["score"] for c in got], [c["score"] for c in want], atol=1e-4)


def test_targets_apply_to_every_mask_and_text(english_artifact: Path, english_pipeline) -> None:  # type: ignore[no-untyped-def]
    filler = OnnxMaskFiller.from_pretrained(english_artifact, variant="fp32")
    texts = ["a [MASK] is here.", "the [MASK] and the [MASK]."]
    got = filler(texts, targets=["cat", "dog", "car"], top_k=2, return_sequence=False)
    assert len(got[0]) == 2 and len(got[1]) == 2 and len(got[1][0]) == 2
    want = english_pipeline(texts[0], targets=["cat", "dog", "car"], top_k=2)
    np.testing.assert_allclose([c["score"] for c in got[0]], [c["score"] for c in want], atol=1e-4)
    plain = filler(texts[1], top_k=50, return_sequence=False)
    for candidates, full in zip(got[1], plain):
        by_token = {c["token"]: c["score"] for c in full}
        for c in candidates:
            if c["token"] in by_token:  # the same probability as without targets
                assert c["score"] == pytest.approx(by_token[c["token"]], abs=1e-6)


def test_targets_that_name_nothing_are_an_input_error(tiny_artifact: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    with pytest.raises(InputError, match="at least one target"), pytest.warns(UserWarning, match="ignored"):
        filler("the [MASK] sat", targets=[""])
    with pytest.raises(InputError, match="targets must be strings"):
        filler("the [MASK] sat", targets=[3])
    with pytest.raises(InputError, match="targets must be a string or a list of strings, got int"):
        filler("the [MASK] sat", targets=5)
    assert filler("the [MASK] sat", targets={"cat", "dog"}, top_k=5) == filler("the [MASK] sat", targets=["dog", "cat"])
