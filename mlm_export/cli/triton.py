"""`mlm-export triton DIRECTORY --repo REPO`: a graph into a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import command, common_options, key_file, _out


@command("triton")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--repo", required=True, type=click.Path(path_type=Path),
              help="The Triton model repository to add the model to (created if missing).")
@click.option("--variant", help="Graph to serve: fp32, fp16, int8 or logits [fp32, else the first fill-mask graph].")
@click.option("--name", help="Model name in the repository [the artifact's name].")
@click.option("--max-batch-size", type=click.IntRange(0, None), default=0, show_default=True,
              help="Dynamic batching; the logits graph only (fill-mask outputs are per mask, not per row).")
@click.option("--instances", type=click.IntRange(1, None), default=1, show_default=True,
              help="Model instances per device.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Instance group kind; int8 is refused on gpu.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@common_options
def triton_command(directory: Path, repo: Path, variant: str | None, name: str | None, max_batch_size: int,
                   instances: int, device: str, key: Path | None, as_json: bool) -> None:
    """Write DIRECTORY's graph into a Triton Inference Server model repository (onnxruntime backend)."""
    from ..triton import write_triton_repository

    model = write_triton_repository(directory, repo, variant=variant, name=name, max_batch_size=max_batch_size,
                                    instances=instances, device=device, public_key=key)
    _out().result("triton", {"name": model.name, "variant": model.variant, "config": str(model.config_path),
                   "model": str(model.model_path), "max_batch_size": model.max_batch_size, "device": model.device},
                  f"wrote {model.config_path}, {model.model_path} and, for clients, {model.tokenizer_path} "
                  f"({model.variant}, "
                  f"max_batch_size {model.max_batch_size}, {model.device})")
