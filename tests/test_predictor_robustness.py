"""The predictor under arbitrary input, many threads and many calls: documented answers or InputError, no leaks."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlm_export import InputError, OnnxMaskFiller

from conftest import WORDS

MASK = "[MASK]"
_fragments = st.one_of(
    st.sampled_from(WORDS + [MASK, MASK, MASK]),
    st.sampled_from(WORDS + [MASK]),
    st.text(max_size=6),                                                    # any Unicode
    st.sampled_from(["[MASK][MASK]", "x[MASK]y", "[mask]", "[MAS", "\u0000", "\u200b", "  \n\t"]),
)
# short texts, and texts around the tiny model's limit of 64 tokens
_clean = st.one_of(st.lists(_fragments, max_size=20), st.lists(_fragments, min_size=50, max_size=75)).flatmap(
    lambda parts: st.sampled_from([" ".join(parts), "".join(parts)]))
_surrogate = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
texts = st.one_of(_clean, _clean, _clean, st.tuples(_clean, _surrogate).map("".join))


@pytest.fixture(scope="module")
def filler(tiny_artifact: Path) -> OnnxMaskFiller:
    return OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu", threads=1)


def _refusal(filler: OnnxMaskFiller, text: object) -> str | None:
    """The documented reason a text is refused, worked out independently of the filler's checks."""
    if not isinstance(text, str):
        return "not a string"
    if not text.strip():
        return "is empty"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return "not valid Unicode"
    ids = filler.tokenizer.encode(text).ids
    if filler.mask_token_id not in ids:
        return "has no [MASK]"
    if len(ids) > filler.max_length:
        return "tokens long"
    return None


def _check_shape(filler: OnnxMaskFiller, text: str, result: list, top_k: int, with_sequence: bool) -> None:
    masks = filler.tokenizer.encode(text).ids.count(filler.mask_token_id)
    per_mask = [result] if masks == 1 else result
    assert masks >= 1 and len(per_mask) == masks
    vocab = filler.manifest.model.vocab_size
    keys = {"score", "token", "token_str"} | ({"sequence"} if with_sequence else set())
    for candidates in per_mask:
        assert len(candidates) == min(top_k, vocab)
        scores = [c["score"] for c in candidates]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        for c in candidates:
            assert set(c) == keys and 0 <= c["token"] < vocab and isinstance(c["token_str"], str)


# derandomized: the suite runs the same examples every time (explore more with --hypothesis-seed)
PROPERTY = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=250, **PROPERTY)
@given(text=texts, top_k=st.integers(min_value=1, max_value=2**70), with_sequence=st.booleans())
def test_any_text_gets_the_documented_shape_or_an_input_error(filler: OnnxMaskFiller, text: str, top_k: int,
                                                              with_sequence: bool) -> None:
    reason = _refusal(filler, text)
    if reason is not None:
        with pytest.raises(InputError, match=re.escape(reason)):
            filler(text, top_k=top_k, return_sequence=with_sequence)
        return
    _check_shape(filler, text, filler(text, top_k=top_k, return_sequence=with_sequence), top_k, with_sequence)


@settings(max_examples=60, **PROPERTY)
@given(batch=st.lists(st.one_of(texts, texts, texts, st.binary(max_size=8), st.integers(), st.none()),
                      min_size=1, max_size=6))
def test_any_batch_answers_every_text_or_raises_input_error(filler: OnnxMaskFiller, batch: list) -> None:
    if any(_refusal(filler, text) for text in batch):
        with pytest.raises(InputError):
            filler(batch, top_k=3)
        return
    results = filler(batch, top_k=3)
    if len(batch) == 1:  # like the pipeline, a one-element list gives its element's result
        results = [results]
    assert len(results) == len(batch)
    for text, result in zip(batch, results):
        _check_shape(filler, text, result, 3, True)


@pytest.mark.parametrize("bad,match", [
    (b"a [MASK]", "bytes, not a string"),
    (["a [MASK]", b"b [MASK]"], "input 1 is bytes"),
    ("a \ud800 [MASK]", "not valid Unicode"),
    (42, "a string or a list of strings"),
    ({"a [MASK]"}, "a string or a list of strings"),
    (None, "a string or a list of strings"),
])
def test_wrong_input_types_are_named(filler: OnnxMaskFiller, bad: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        filler(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,match", [
    ({"threads": 10**6}, "threads must be between 1 and"),
    ({"threads": 2.5}, "threads must be an integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": "8"}, "batch_size must be a positive integer"),
    ({"variant": 3}, "variant must be a name"),
])
def test_bad_settings_are_input_errors_before_any_session_starts(tiny_artifact: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu", **kwargs)


def test_return_sequence_false_drops_only_the_sequence(filler: OnnxMaskFiller) -> None:
    full = filler("the [MASK] sat on the [MASK] .", top_k=4)
    slim = filler("the [MASK] sat on the [MASK] .", top_k=4, return_sequence=False)
    assert [[{k: c[k] for k in ("score", "token", "token_str")} for c in mask] for mask in full] == slim


def test_threads_times_calls_equal_sequential(filler: OnnxMaskFiller) -> None:
    texts = [f"the {a} [MASK] on the {b} ." + " big" * (i % 7) for i, (a, b) in
             enumerate((a, b) for a in WORDS[:10] for b in WORDS[10:20])]  # 100 distinct texts
    expected = [filler(text, top_k=3) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rounds = list(pool.map(lambda _: [filler(text, top_k=3) for text in texts], range(8)))
    assert all(got == expected for got in rounds), "8 threads x 100 calls must match the sequential answers"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_memory_stays_flat_over_many_calls(filler: OnnxMaskFiller) -> None:
    batch = [f"the {w} [MASK] on the [MASK] ." + " red" * (i % 9) for i, w in enumerate(WORDS[:8])]
    for _ in range(300):  # warm up ONNX Runtime's arenas and Python's allocator
        filler(batch, top_k=5)
    before = _rss_bytes()
    for _ in range(2000):
        filler(batch, top_k=5)
    grown = _rss_bytes() - before
    # 2000 calls x 80 candidates: a leak of the results alone would be well over 50 MB
    assert grown < 24 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 2000 calls"


@pytest.mark.parametrize("call,match", [
    (lambda f, a: OnnxMaskFiller.from_pretrained(None), "directory must be a path"),  # type: ignore[arg-type]
    (lambda f, a: f(np.array("a [MASK]")), "a string or a list of strings"),
    (lambda f, a: f("a [MASK]", return_sequence="no"), "return_sequence must be True or False"),
])
def test_api_arguments_of_the_wrong_kind(filler: OnnxMaskFiller, tiny_artifact: Path, call: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        call(filler, tiny_artifact)
