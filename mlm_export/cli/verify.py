"""`mlm-export verify DIRECTORY`: the signature, the file hashes, and every graph against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ParityError
from ._common import command, common_options, quiet_option, key_file, verify_providers_choice, _out


@command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--source", help="Model to compare against, if not the one recorded in the manifest.")
@click.option("--probe-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Realistic probe texts, one per line (UTF-8), used instead of the packaged set.")
@click.option("--providers", type=verify_providers_choice, default="cpu", show_default=True,
              help="cpu, cuda or auto (int8 is judged on the CPU, bf16 on OpenVINO, whatever this says).")
@click.option("--key", type=key_file, help="Public key: require a valid signature of the manifest.")
@common_options
@quiet_option
def verify_command(directory: Path, source: str | None, probe_file: Path | None, providers: str,
                   key: Path | None, as_json: bool, quiet: bool) -> None:
    """Check the signature (with --key) and file hashes, then compare every graph with a fresh PyTorch model."""
    from ..verify import read_probe_file, verify_artifact

    texts = read_probe_file(probe_file) if probe_file else None
    report = verify_artifact(directory, source=source, providers=providers, probe_texts=texts, public_key=key)
    if not report.passed:
        if not as_json:
            _out().echo(report.summary())
        raise ParityError("parity check failed", report)
    _out().result("verify", report.to_dict(), report.summary())
