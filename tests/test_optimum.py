"""The logits-form directory is a drop-in for optimum's ORTModelForMaskedLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertForMaskedLM


def test_optimum_loads_the_artifact_and_agrees_with_pytorch(english_artifact: Path, english_dir: Path) -> None:
    from optimum.onnxruntime import ORTModelForMaskedLM

    ort_model = ORTModelForMaskedLM.from_pretrained(english_artifact)
    tokenizer = AutoTokenizer.from_pretrained(english_artifact)
    batch = tokenizer(["The [MASK] sat on the mat.", "A short [MASK]"], padding=True, return_tensors="pt")
    got = ort_model(**batch).logits.detach().numpy()
    reference = BertForMaskedLM.from_pretrained(english_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).logits.numpy()
    real = batch["attention_mask"].numpy().astype(bool)
    assert got.shape == expected.shape
    assert np.abs(got[real] - expected[real]).max() < 1e-4
