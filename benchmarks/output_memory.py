"""Memory a fill-mask call's result holds, with and without each candidate's `sequence`.

    python benchmarks/output_memory.py [--texts 10] [--masks 510] [--top-k 25]

Builds a seeded tiny BERT with 512 positions (the figures are about the result's Python objects,
not the model), exports it to a temporary directory, and measures one call with `tracemalloc`.
The README's "Resource bounds" table comes from the defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

# 32 tokens, so that top_k=25 is not clamped to the vocabulary
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue",
         "big", "small", "ran", "to", "house", "tree", "is", "was", "and", "or", "not", ".", ",", "!", "?", "##s",
         "##ed", "##ing"]


def tiny_model(directory: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    BertForMaskedLM(config).eval().save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=10)
    parser.add_argument("--masks", type=int, default=510)
    parser.add_argument("--top-k", type=int, default=25)
    args = parser.parse_args()

    from mlm_export import ExportConfig, OnnxMaskFiller, export_model

    with tempfile.TemporaryDirectory() as work:
        source = tiny_model(Path(work) / "tiny")
        artifact = export_model(ExportConfig(str(source), out=Path(work) / "artifact")).path
        filler = OnnxMaskFiller.from_pretrained(artifact, providers="cpu")
        texts = ["[MASK] " * args.masks] * args.texts
        for with_sequence in (False, True):
            tracemalloc.start()
            start = time.perf_counter()
            result = filler(texts, top_k=args.top_k, return_sequence=with_sequence)
            seconds = time.perf_counter() - start
            held, _peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            candidates = sum(len(mask) for per_text in result for mask in per_text)
            print(f"return_sequence={with_sequence}: {candidates} candidates, {held / 1e6:.1f} MB held "
                  f"({held / candidates:.0f} B per candidate), {seconds:.1f} s")
            del result


if __name__ == "__main__":
    main()
