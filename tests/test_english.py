"""English WordPiece (the real bert-base-uncased vocabulary) against transformers' own pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlm_export import OnnxMaskFiller

TEXTS = [
    "Hello, [MASK]!",
    "The capital of FRANCE is [MASK].",
    "She ordered a café [MASK] at the naïve bistro.",
    "[MASK], said the man (quietly).",
    "It's the [MASK]'s toy - isn't it?",
    "Numbers like 3.14 and [MASK] matter",
]


@pytest.fixture(scope="module")
def reference(english_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer, BertForMaskedLM, pipeline

    model = BertForMaskedLM.from_pretrained(english_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(english_dir)
    return pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def filler(english_artifact: Path) -> OnnxMaskFiller:
    return OnnxMaskFiller.from_pretrained(english_artifact, providers="cpu")


def test_token_ids_match_the_transformers_tokenizer(english_dir: Path, filler: OnnxMaskFiller) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(english_dir)
    for text in TEXTS + ["UPPER lower MiXeD", "Ünïcödé accents: résumé"]:
        assert filler.tokenizer.encode(text).ids == hf(text, truncation=False)["input_ids"], text


@pytest.mark.parametrize("text", TEXTS)
def test_predictions_match_the_transformers_pipeline(text: str, reference, filler: OnnxMaskFiller) -> None:  # type: ignore[no-untyped-def]
    expected = reference(text, top_k=5)
    got = filler(text, top_k=5)
    assert [c["token"] for c in got] == [c["token"] for c in expected]
    assert [c["token_str"] for c in got] == [c["token_str"] for c in expected]
    assert [c["sequence"] for c in got] == [c["sequence"] for c in expected]
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-6)


def test_mask_next_to_punctuation_is_one_token(filler: OnnxMaskFiller) -> None:
    tokens = filler.tokenizer.encode("([MASK]), [MASK]!").tokens
    assert tokens == ["[CLS]", "(", "[MASK]", ")", ",", "[MASK]", "!", "[SEP]"]
