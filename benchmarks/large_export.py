"""An export above protobuf's 2 GB limit: a seeded model of xlm-roberta-large's shape, end to end.

    python benchmarks/large_export.py [--work DIR] [--keep] [--fp16] [--int8]

560M parameters (2.24 GB in float32): 24 layers, hidden 1024, a 250,002-token vocabulary. The
weights are random (seeded) with a spread decoder bias, and the tokenizer is a word-level one over
made-up tokens: this proves the external-data path (export, fusion, fp16, int8, verification,
predictor), not accuracy, so the gates run on the synthetic probes. Random weights give near-flat
predictions, so int8 may miss its gate (export then writes nothing and the figures are printed).
Prints the wall time, the peak resident memory of the process, and the artifact's files. Needs about
20 GB of memory and 15 GB of free disk under --work.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

VOCAB = 250_002
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def seeded_model(directory: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=VOCAB, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1)
    model = XLMRobertaForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.copy_(torch.randn(VOCAB) * 4)
    model.save_pretrained(directory)
    vocab = {token: i for i, token in enumerate([*SPECIALS, *(f"w{i}" for i in range(VOCAB - 5)), "<mask>"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    names = {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "mask_token": "<mask>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(names))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the seeded model and the artifact")
    parser.add_argument("--fp16", action="store_true", help="also the fp16 variant")
    parser.add_argument("--int8", action="store_true", help="also the int8 variant (gated on synthetic probes)")
    args = parser.parse_args()

    from mlm_export import ExportConfig, OnnxMaskFiller, ParityError, export_model

    work = Path(tempfile.mkdtemp(prefix="mlm-export-large-", dir=args.work))
    try:
        start = time.perf_counter()
        source = seeded_model(work / "xlmr-large-seeded")
        built = time.perf_counter()
        try:
            result = export_model(ExportConfig(str(source), out=work / "artifact", fp16=args.fp16, int8=args.int8))
        except ParityError as exc:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
            print(f"export stopped at its gates after {time.perf_counter() - built:.0f} s; peak resident memory "
                  f"{peak:.1f} GB\n{exc}")
            return
        exported = time.perf_counter()
        filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
        answer = filler("w1 w2 <mask> w4", top_k=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kilobytes on Linux
        print(f"seeded model: {built - start:.0f} s; export (trace, fuse, verify): {exported - built:.0f} s")
        print(f"peak resident memory of the process: {peak:.1f} GB")
        print(f"report: {'passed' if result.report.passed else 'FAILED'}")
        print(result.report.summary())
        print(f"predictor ({filler.variant}, {filler.provider}): {answer[0]['token_str']} {answer[0]['score']:.3f}")
        for name, entry in sorted(result.manifest.files.items()):
            print(f"  {name:<28} {entry.size / 1e9:7.3f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
