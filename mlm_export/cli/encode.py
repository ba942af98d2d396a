"""`mlm-export encode DIRECTORY INPUT`: the SPLADE vectors or embeddings of every sequence of a file."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..runtime.threads import max_threads
from ._common import (
    STDOUT_NAMES,
    command,
    common_options,
    engine_options,
    input_options,
    kept_names,
    key_file,
    providers_choice,
    quiet_option,
    _out,
)


@command("encode")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(["sparse", "embed"]),
              help="What to compute [the one of the two the artifact has].")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="A .jsonl or .parquet file, or for embeddings .npy (pooled) or .h5 (keyed by record id) "
                   "[JSON Lines on stdout, also for '-'].")
@input_options
@click.option("--top-k", type=click.IntRange(1, None), help="sparse: keep a row's heaviest terms only.")
@click.option("--threshold", type=click.FloatRange(0, None), default=0.0, show_default=True,
              help="sparse: keep the terms weighing more than this.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "none"]),
              help="embed: mean over the sequence's own tokens, the first token's state, or none (per token) "
                   "[mean].")
@click.option("--truncate", is_flag=True,
              help="Keep the first tokens of a sequence longer than the model takes (else it is a bad row).")
@click.option("--variant", help="Graph variant (e.g. int8 or sparse.int8); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (the bf16 variant); Ray's CPU workers take auto, cpu or openvino.")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads, ONNX Runtime intra-op or OpenVINO (per actor with --engine ray).")
@click.option("--batch-size", type=click.IntRange(1, None), default=32, show_default=True,
              help="Sequences per graph run.")
@engine_options
@click.option("--strict", is_flag=True, help="Stop at the first bad row; no --output file is written.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@quiet_option
@common_options
def encode_command(directory: Path, input_path: Path, task: str | None, output: Path | None, column: str | None,
                   input_format: str | None, keep_columns: str | None, top_k: int | None, threshold: float,
                   pooling: str | None, truncate: bool, variant: str | None, providers: str, threads: int | None,
                   batch_size: int, engine: str, ray_address: str | None, workers: int | None, strict: bool,
                   force: bool, key: Path | None, quiet: bool, as_json: bool) -> None:
    """SPLADE term weights (--task sparse) or embeddings (--task embed) of every sequence in INPUT.

    INPUT is read as `score` reads it (text, FASTA, CSV, Parquet; the other columns kept). Each output
    row holds the kept columns, then line, text, n_tokens, the vector (sparse: indices and values;
    embed: embedding), variant and provider, in input order; a row that cannot be encoded holds
    `error` instead (and a warning names its line) unless --strict.
    """
    from ..batch.encoding import EncodeJob, encode_file

    output_ = _out()
    if output is not None and str(output) in STDOUT_NAMES:
        output = None
    if threshold != threshold:
        raise click.BadParameter("must be a number >= 0, not nan", param_hint="--threshold")
    job = EncodeJob(directory, input_path, task, output, column, variant, providers, threads, batch_size, top_k,
                    threshold, pooling, truncate, strict, force, key, kept_names(keep_columns), input_format, engine,
                    ray_address, workers, progress=not (quiet or as_json))
    output_.jsonl = output is None
    summary = encode_file(job, stdout=output_.stream)
    failed = f"; {len(summary.failed)} not encoded (lines {', '.join(str(n) for n, _ in summary.failed[:10])}" \
             f"{', ...' if len(summary.failed) > 10 else ''})" if summary.failed else ""
    rate = f" ({summary.rows / summary.seconds:.1f}/s)" if summary.seconds else ""
    logging.getLogger("mlm_export").info("encoded %d of %d sequences (%s) with %s on %s in %.1f s%s%s",
                                         summary.encoded, summary.rows, summary.task, summary.variant,
                                         summary.provider, summary.seconds, rate, failed)
    if output is not None and as_json:
        output_.result("encode", summary.to_dict(), "")
