"""The filler against transformers' fill-mask pipeline, family by family, on every call shape.

Every family of the registry (`mlm_export.families.FAMILIES`) gets its tiny model from
`layouts.BUILDERS`, each with its own kind of tokenizer (byte-level BPE, Unigram, WordPiece,
characters), exported fp32, and asked the same questions as `pipeline("fill-mask")`: nesting, token,
token_str, sequence, and scores within 1e-4. A registered family without a builder fails here. The
English BERT cases on real weights live in test_english.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import layouts
from mlm_export import ExportConfig, OnnxMaskFiller, export_model
from mlm_export.families import FAMILIES
from mlm_export.manifest import read_manifest


def test_every_registered_family_has_a_builder_and_no_builder_is_stray() -> None:
    assert sorted(set(FAMILIES) - set(layouts.BUILDERS)) == [], "add the family's builder to tests/layouts.py"
    assert sorted(set(layouts.BUILDERS) - set(FAMILIES)) == [], "a builder for a family the registry lacks"


# one family's tests on one xdist worker: each tiny model is built and exported once
@pytest.fixture(scope="module", params=[pytest.param(f, marks=pytest.mark.xdist_group(f"pipeline-{f}"))
                                        for f in FAMILIES])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    family = request.param
    if family not in layouts.BUILDERS:
        pytest.fail(f"the family {family!r} has no builder in tests/layouts.py BUILDERS")
    root = tmp_path_factory.mktemp("pipeline-families")
    source = layouts.BUILDERS[family](root / family)
    # every task: the sparse and embed graphs of each family are gated against its model here too
    artifact = export_model(ExportConfig(str(source), out=root / "artifact",
                                         tasks=("fill-mask", "sparse", "embed"))).path
    assert read_manifest(artifact).family == family
    filler = OnnxMaskFiller.from_pretrained(artifact, providers="cpu")
    model = AutoModelForMaskedLM.from_pretrained(source).eval()
    reference = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(source), device="cpu")
    return read_manifest(artifact).tokenizer.char_level, filler, reference


def _texts(residues: bool, mask: str) -> dict[str, Any]:
    """Protein chains for a character-level vocabulary (amino acids), English for the others."""
    if residues:
        one, two, three = f"MKT{mask}LLA", f"A{mask}GV{mask}K", f"GG{mask}HW"
        return {"one": one, "two": two, "list": [one, two, three], "targets": ["L", "K", "W"]}
    one, two = f"the cat {mask} on the mat .", f"a {mask} dog ran to the {mask} house ."
    three = f"is the {mask} on the mat ?"
    return {"one": one, "two": two, "list": [one, two, three], "targets": ["cat", "dog", "tree"]}


def _same(got: Any, want: Any, unspaced: bool = False) -> None:
    """Same nesting; per candidate the same token, token_str and sequence; scores within 1e-4.

    `unspaced`: the one documented difference (README, "Pipeline parity"). ESM, the character-level family,
    has only a slow tokenizer in transformers, which joins residues with spaces ("M K T N"); the filler
    gives the chain as written.
    """
    if isinstance(want, dict):
        assert isinstance(got, dict), (got, want)
        sequence = want["sequence"].replace(" ", "") if unspaced else want["sequence"]
        assert (got["token"], got["token_str"], got["sequence"]) == (want["token"], want["token_str"], sequence)
        np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-4)  # the "within 1e-4"
        return
    assert isinstance(got, list) and len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        _same(g, w, unspaced)


CALLS = {
    "a string, one mask": lambda t: ((t["one"],), {"top_k": 3}),
    "a string, two masks": lambda t: ((t["two"],), {"top_k": 2}),
    "a one-element list": lambda t: (([t["one"]],), {"top_k": 3}),
    "a list with one and two masks": lambda t: ((t["list"],), {"top_k": 4}),
    "top_k 1": lambda t: ((t["one"],), {"top_k": 1}),
    "targets": lambda t: ((t["one"],), {"targets": t["targets"]}),
    "targets and top_k": lambda t: ((t["list"],), {"targets": t["targets"], "top_k": 2}),
    "a call-time batch_size": lambda t: ((t["list"],), {"top_k": 2, "batch_size": 2}),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.filterwarnings("ignore:the target .* is not in the model's vocabulary")  # asked for: see "tree"
def test_every_call_shape_equals_the_pipeline(pair: Any, call: str) -> None:
    residues, filler, reference = pair
    args, kwargs = CALLS[call](_texts(residues, filler.mask_token))
    _same(filler(*args, **kwargs), reference(*args, **kwargs), unspaced=residues)


def test_sparse_and_embed_equal_the_familys_own_model(pair: Any) -> None:
    """SPLADE from the family's MaskedLM logits and mean embeddings from its last hidden states, computed
    here with torch on each text alone; the artifact's graphs run the texts as one padded batch."""
    import torch

    from mlm_export import Embedder, SparseEncoder

    residues, filler, reference = pair
    texts = ["MKTLLAGVK", "GGHW", "AKGVLKMNPQ"] if residues else ["the cat sat on the mat .", "a dog",
                                                                  "is the tree on the big mat ?"]
    sparse = SparseEncoder.from_pretrained(filler.artifact, variant="fp32", providers="cpu").encode(texts)
    embedder = Embedder.from_pretrained(filler.artifact, variant="fp32", providers="cpu")
    tokens = embedder.encode(texts, pooling="none", include_special=True)
    for i, text in enumerate(texts):
        ids = filler.tokenizer.encode(text).ids
        with torch.no_grad():
            out = reference.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        want = torch.log1p(torch.relu(out.logits[0])).amax(dim=0).numpy()
        dense = np.zeros_like(want)
        dense[sparse[i].indices] = sparse[i].values
        np.testing.assert_allclose(dense, want, rtol=0, atol=1e-4)
        np.testing.assert_allclose(tokens[i], out.hidden_states[-1][0].numpy(), rtol=0, atol=1e-4)
