"""`mlm-export slim DIRECTORY --keep GRAPH --out OUT`: a copy with only some graphs."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import command, common_options, _out


@command("slim")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--keep", multiple=True, required=True,
              help="A graph to keep (repeatable, or comma-separated), e.g. --keep int8.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="The slim artifact's directory.")
@click.option("--force", is_flag=True, help="Replace an existing mlm-export artifact at --out.")
@common_options
def slim_command(directory: Path, keep: tuple[str, ...], out: Path, force: bool, as_json: bool) -> None:
    """Copy the artifact in DIRECTORY with only the graphs to --keep: a serving artifact, still hash-checked
    and, if it was signed, still verifiable with the same key."""
    from ..artifact.slim import slim_artifact

    result = slim_artifact(directory, out, keep, force)
    _out().result("slim", result.to_dict(),
                  f"wrote {out}: {', '.join(result.kept)} ({result.bytes / 1e6:.1f} MB of "
                  f"{result.bytes_before / 1e6:.1f} MB); left out {', '.join(result.absent) or 'nothing'}")
