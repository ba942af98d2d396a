"""`mlm-export score DIRECTORY INPUT`: the pseudo-log-likelihood of every sequence of a file."""

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



@command("score")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="A .jsonl or .parquet file [JSON Lines on stdout, also for '-' and /dev/stdout].")
@input_options
@click.option("--max-unknown", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Warn about a sequence with a larger share of tokens unknown to the model (refuse it "
                   "with --strict).")
@click.option("--reduction", type=click.Choice(["sum", "mean"]), default="sum", show_default=True,
              help="sum: Salazar et al.'s PLL; mean: per scored token.")
@click.option("--exclude-special", is_flag=True,
              help="Softmax over the vocabulary without its special tokens (AntiBERTy's convention).")
@click.option("--per-token", is_flag=True, help="Add each scored token's log-probability.")
@click.option("--variant", help="Graph variant (e.g. int8); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (the bf16 variant); Ray's CPU workers take auto, cpu or openvino.")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads, ONNX Runtime intra-op or OpenVINO (per actor with --engine ray).")
@click.option("--batch-size", type=click.IntRange(1, None),
              help="Masked copies per graph run (default: ~1,000 tokens per run on ONNX Runtime's CPU provider, "
                   "128 copies elsewhere).")
@engine_options
@click.option("--strict", is_flag=True, help="Stop at the first bad row; no --output file is written.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@quiet_option
@common_options
def score_command(directory: Path, input_path: Path, output: Path | None, column: str | None,
                  input_format: str | None, keep_columns: str | None, max_unknown: float, reduction: str,
                  exclude_special: bool, per_token: bool, variant: str | None, providers: str,
                  threads: int | None, batch_size: int | None, engine: str, ray_address: str | None,
                  workers: int | None, strict: bool, force: bool, key: Path | None, quiet: bool,
                  as_json: bool) -> None:
    """Pseudo-log-likelihood of every sequence in INPUT with the artifact in DIRECTORY.

    INPUT is a text file (one sequence per line), FASTA, or a .csv/.parquet file with --column. Each
    output row holds the input's other columns (FASTA: id, description), then line, text, pll,
    n_tokens, unknown_tokens, variant and provider, in input order; a row that cannot be scored holds
    `error` instead (and a warning names its line) unless --strict.
    """
    from ..batch import ScoreJob, score_file
    from ..runtime.scoring import ScoreOptions

    output_ = _out()
    if output is not None and str(output) in STDOUT_NAMES:
        output = None  # the rows go to the real stdout (the CLI points file descriptor 1 at stderr meanwhile)
    if max_unknown != max_unknown:
        raise click.BadParameter("must be a fraction from 0 to 1, not nan", param_hint="--max-unknown")
    job = ScoreJob(directory, input_path, output, column,
                   ScoreOptions(reduction, exclude_special, per_token, batch_size, max_unknown), variant, providers,
                   threads, strict, force, engine, ray_address, workers, progress=not (quiet or as_json),
                   public_key=key, keep_columns=kept_names(keep_columns), format=input_format)
    output_.jsonl = output is None  # the rows stream to stdout: a failure ends it with one error record
    summary = score_file(job, stdout=output_.stream)
    failed = f"; {len(summary.failed)} not scored (lines {', '.join(str(n) for n, _ in summary.failed[:10])}" \
             f"{', ...' if len(summary.failed) > 10 else ''})" if summary.failed else ""
    rate = f" ({summary.rows / summary.seconds:.1f}/s)" if summary.seconds else ""
    log = logging.getLogger("mlm_export")
    log.info("scored %d of %d sequences with %s on %s in %.1f s%s%s", summary.scored, summary.rows,
             summary.variant, summary.provider, summary.seconds, rate, failed)
    if summary.warned_rows:
        log.warning("%d scored sequences are more than %.0f%% tokens unknown to the model (lines %s%s); their "
                    "scores mean little: see each row's warning", summary.warned_rows, max_unknown * 100,
                    ", ".join(str(n) for n, _ in summary.warned[:10]), ", ..." if summary.warned_rows > 10 else "")
    if output is not None and as_json:
        output_.result("score", summary.to_dict(), "")
