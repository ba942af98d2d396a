"""English WordPiece (the real bert-base-uncased vocabulary) against transformers' own pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("inputs", [
    ["the [MASK] sat on the mat."],                  # a one-element list: the pipeline unwraps it
    "the [MASK] and the [MASK].",                    # several masks: [CLS]/[SEP] and the other [MASK] stay
    "snow ☃ and [MASK] here",                        # an unknown character: its [UNK] is dropped
    ["a [MASK] cat", "b [MASK] and [MASK]", "Café [MASK]!"],
])
def test_nesting_and_sequences_equal_the_pipeline(inputs, reference, filler: OnnxMaskFiller) -> None:  # type: ignore[no-untyped-def]
    def flat(result):  # type: ignore[no-untyped-def]
        if isinstance(result, dict):
            return [(result["token"], result["token_str"], result["sequence"])], [result["score"]]
        pairs = [flat(r) for r in result]
        return [p for fields, _ in pairs for p in fields], [s for _, scores in pairs for s in scores]

    expected, got = reference(inputs, top_k=3), filler(inputs, top_k=3)
    shape = lambda r: [shape(x) for x in r] if isinstance(r, list) else "c"  # noqa: E731
    assert shape(got) == shape(expected)
    (got_fields, got_scores), (want_fields, want_scores) = flat(got), flat(expected)
    assert got_fields == want_fields
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"truncation": True, "max_length": 6}, {"truncation": "longest_first", "max_length": 4},
    {"truncation": True}, {"truncation": False, "max_length": 3},
])
def test_tokenizer_kwargs_truncate_as_the_pipeline(kwargs: dict, reference, filler: OnnxMaskFiller) -> None:  # type: ignore[no-untyped-def]
    text = "the [MASK] sat on the mat and the dog ran to the house"
    expected = reference(text, top_k=3, tokenizer_kwargs=kwargs)
    got = filler(text, top_k=3, tokenizer_kwargs=kwargs)
    assert [(c["token"], c["sequence"]) for c in got] == [(c["token"], c["sequence"]) for c in expected]
    np.testing.assert_allclose([c["score"] for c in got], [c["score"] for c in expected], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,says", [
    ({"truncation": True, "max_length": 4}, "would cut a \\[MASK\\] token"),  # the pipeline: "No mask_token found"
    ({"truncation": True, "max_length": 2}, "no room for text"),
    ({"padding": True}, "not supported"),
    ({"truncation": "sideways"}, "truncation strategy"),
    ({"truncation": True, "max_length": 0}, "max_length must be a positive integer"),
])
def test_truncation_never_cuts_a_mask_silently(kwargs: dict, says: str, filler: OnnxMaskFiller) -> None:
    from mlm_export import InputError

    with pytest.raises(InputError, match=says):
        filler("a b c d [MASK]", tokenizer_kwargs=kwargs)
