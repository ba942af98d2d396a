"""`mlm-export predict DIRECTORY TEXT...`: fill the masks of each text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..runtime.threads import max_threads
from ._common import command, common_options, key_file, providers_choice, _out


@command("predict")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--top-k", "-k", type=click.IntRange(1, None), default=5, show_default=True)
@click.option("--variant", help="Graph variant (e.g. fp32); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (runs the bf16 variant).")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads, ONNX Runtime intra-op or OpenVINO (1 to 4 x the CPUs this process may use).")
@click.option("--no-sequence", is_flag=True, help="Leave out each candidate's filled-in sequence.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@common_options
def predict_command(directory: Path, texts: tuple[str, ...], top_k: int, variant: str | None,
                    providers: str, threads: int | None, no_sequence: bool, key: Path | None,
                    as_json: bool) -> None:
    """Fill the mask tokens ([MASK], <mask>, ...) of each TEXT with the artifact in DIRECTORY."""
    from ..runtime.predictor import OnnxMaskFiller

    filler = OnnxMaskFiller.from_pretrained(directory, variant=variant, providers=providers, threads=threads,
                                            public_key=key)
    results: Any = filler(list(texts), top_k=top_k, return_sequence=not no_sequence)
    if len(texts) == 1:  # the filler, like the pipeline, gives a one-element list its element's result
        results = [results]
    lines = [f"({filler.variant} on {filler.provider})"]  # the default variant depends on the CPU
    for text, result in zip(texts, results):
        lines.append(text)
        masks = [result] if result and isinstance(result[0], dict) else result
        for n, candidates in enumerate(masks, 1):
            if len(masks) > 1:
                lines.append(f"  mask {n}:")
            for rank, c in enumerate(candidates, 1):
                lines.append(f"  {rank:>2}. {c['token_str']:<12} {c['score']:.4f}  {c.get('sequence', '')}".rstrip())
    _out().result("predict", {"variant": filler.variant, "provider": filler.provider, "results": results},
                  "\n".join(lines))
