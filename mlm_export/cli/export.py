"""`mlm-export export MODEL` (also `mlm-export MODEL`): export, fuse, verify and write the artifact."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from ._common import LazyChoice, command, common_options, quiet_option, _out


def _int8_recipe_names() -> tuple[str, ...]:
    from ..passes.int8 import INT8_RECIPE_NAMES  # numpy: loaded for `export --help` or `--int8-recipe` only

    return INT8_RECIPE_NAMES


@command("export")
@click.argument("model")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Artifact directory [models/<name>].")
@click.option("--force", is_flag=True,
              help="Replace an existing mlm-export artifact at --out (never other directories).")
@click.option("--revision", help="Hub revision (branch, tag or commit) for a hub id.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True)
@click.option("--fp16", is_flag=True, help="Add fp16 variants (for the CUDA provider).")
@click.option("--int8", is_flag=True, help="Add int8 variants (for the CPU provider).")
@click.option("--int8-recipe", type=LazyChoice(lambda: ("auto",) + _int8_recipe_names()), default="auto",
              show_default=True,
              help="int8 quantization recipe (implies --int8); auto keeps the fastest that passes the gate.")
@click.option("--bf16", is_flag=True,
              help="Add a bf16 variant for OpenVINO (predict --providers openvino): encoder in bf16, MLM head in "
                   "float32. Needs the openvino extra and a CPU with AVX-512 BF16 or AMX.")
@click.option("--allow-unfused", is_flag=True,
              help="Export even if attention did not fuse in every layer (recorded in the manifest).")
@click.option("--task", "tasks", type=click.Choice(["fill-mask", "sparse", "embed"]), multiple=True,
              help="What the artifact serves; repeat for several: fill-mask (the default), sparse (SPLADE term "
                   "weights), embed (hidden states). Every task's graphs get the variants and gates asked for.")
@click.option("--sparse-pooling", type=click.Choice(["max", "sum"]), default="max", show_default=True,
              help="sparse: pool each term's weight over the tokens by max (SPLADE v2, ++) or sum (SPLADE v1).")
@click.option("--layer", type=int,
              help="embed: the layer whose hidden states are given: 0 the embeddings, -1 or the layer count the "
                   "last [last].")
@click.option("--probe-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Realistic texts for the accuracy gates, one per line (UTF-8); stored in the artifact.")
@common_options
@quiet_option
def export_command(model: str, out: Path | None, force: bool, revision: str | None, opset: int,
                   fp16: bool, int8: bool, int8_recipe: str, bf16: bool, allow_unfused: bool,
                   tasks: tuple[str, ...], sparse_pooling: str, layer: int | None,
                   probe_file: Path | None, as_json: bool, quiet: bool) -> None:
    """Export MODEL, fuse it, verify every graph against PyTorch, and write the artifact."""
    from ..exporter.pipeline import export_model
    from ..config import ExportConfig
    from ..verify import read_probe_file

    config = ExportConfig(model=model, out=out, revision=revision, force=force,
                          allow_unfused=allow_unfused, opset=opset, fp16=fp16,
                          int8=int8 or int8_recipe != "auto", int8_recipe=int8_recipe, bf16=bf16,
                          probe_texts=tuple(read_probe_file(probe_file)) if probe_file else (),
                          tasks=tuple(dict.fromkeys(tasks)) or ("fill-mask",), sparse_pooling=sparse_pooling,
                          layer=layer)
    result = export_model(config)
    _out().result("export", {"path": str(result.path), "manifest": result.manifest.to_dict()},
                  f"{result.report.summary()}\nwrote {result.path}")
