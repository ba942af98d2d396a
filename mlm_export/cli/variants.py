"""`mlm-export variants DIRECTORY`: zero-shot mutation-effect scores (masked and wild-type marginals, PLL delta)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..runtime.threads import max_threads
from ._common import command, common_options, key_file, providers_choice, quiet_option, _out

def _methods(values: tuple[str, ...]) -> tuple[str, ...]:
    """--method, repeatable and comma-separated alike."""
    from ..runtime.mutations import METHODS

    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if values and not names:
        raise click.BadParameter("names no method", param_hint="--method")
    for name in names:
        if name not in METHODS:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(METHODS)}", param_hint="--method")
    return tuple(dict.fromkeys(names)) or ("masked-marginal",)


def _alphabet(value: str | None) -> str | tuple[str, ...] | None:
    """One letter per token ("ACDE..."), or tokens separated by commas."""
    if value is None:
        return None
    return tuple(t.strip() for t in value.split(",") if t.strip()) if "," in value else value


@command("variants")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--wt", help="The wild-type sequence.")
@click.option("--wt-fasta", type=click.Path(path_type=Path),
              help="Wild types from a FASTA file; with several records, --dms rows name theirs (--record-col).")
@click.option("--mutations", help="Variants separated by commas, substitutions of one variant by ':' "
                                  "(A23G,K45R:L50P).")
@click.option("--dms", type=click.Path(path_type=Path),
              help="A deep-mutational-scan table (.csv or .parquet, ProteinGym's format): every column and row kept.")
@click.option("--mutation-col", default="mutant", show_default=True, help="The --dms column holding the variants.")
@click.option("--record-col", default="id", show_default=True,
              help="The --dms column naming each row's --wt-fasta record (several records only).")
@click.option("--saturation", is_flag=True,
              help="Every single substitution of every position: L x (alphabet - 1) rows.")
@click.option("--method", "methods", multiple=True,
              help="masked-marginal (default), wt-marginal or pll-delta; repeat it or separate by commas for "
                   "several columns.")
@click.option("--offset", type=click.IntRange(0, 10**9), default=1, show_default=True,
              help="The number of the sequence's first residue in the mutations (0: positions count from 0).")
@click.option("--alphabet", help="The letters a mutation may introduce (or tokens separated by commas) "
                                 "[the 20 standard amino acids on a protein vocabulary, else every ordinary token].")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="A .csv or .parquet file.")
@click.option("--variant", help="Graph variant (e.g. int8); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (the bf16 variant).")
@click.option("--threads", type=click.IntRange(1, max_threads()), help="Inference threads.")
@click.option("--batch-size", type=click.IntRange(1, None),
              help="Masked copies per graph run [about 1,000 tokens on ONNX Runtime's CPU provider, 128 "
                   "copies on the other backends].")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@quiet_option
@common_options
def variants_command(directory: Path, wt: str | None, wt_fasta: Path | None, mutations: str | None,
                     dms: Path | None, mutation_col: str, record_col: str, saturation: bool,
                     methods: tuple[str, ...], offset: int, alphabet: str | None, output: Path,
                     variant: str | None, providers: str, threads: int | None, batch_size: int | None, force: bool,
                     key: Path | None, quiet: bool, as_json: bool) -> None:
    """Zero-shot effects of mutations of a wild type with the artifact in DIRECTORY.

    masked-marginal: sum over mutated positions of log p(mutant) - log p(wild type), each position masked
    (one PLL of the wild type, whatever the number of variants); wt-marginal: the same from one unmasked
    pass; pll-delta: PLL(mutant) - PLL(wild type), a PLL per variant. Every mutation is checked before
    anything runs; an invalid one is named and nothing is written.
    """
    from ..batch.mutations import VariantsJob, score_variants_file

    output_ = _out()
    if (wt is None) == (wt_fasta is None):  # usage (exit 2): the library checks the same for its own callers
        raise click.UsageError("give the wild type with exactly one of --wt and --wt-fasta")
    if sum(x for x in (mutations is not None, dms is not None, saturation)) != 1:
        raise click.UsageError("give the variants with exactly one of --mutations, --dms and --saturation")
    listed = None if mutations is None else tuple(m.strip() for m in mutations.split(","))
    job = VariantsJob(directory, output, wt, wt_fasta, listed, dms, mutation_col, record_col, saturation,
                      _methods(methods), offset, _alphabet(alphabet), variant, providers, threads, batch_size, force,
                      key, progress=not (quiet or as_json))
    summary = score_variants_file(job)
    logging.getLogger("mlm_export").info(
        "scored %d variants of %d wild type%s (%s) with %s on %s in %.1f s -> %s", summary.rows, summary.wild_types,
        "s" if summary.wild_types != 1 else "", ", ".join(summary.methods), summary.variant, summary.provider,
        summary.seconds, summary.output)
    if as_json:
        output_.result("variants", summary.to_dict(), "")
