"""`mlm-export sign DIRECTORY --key KEY`: sign an artifact's manifest."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import command, common_options, key_file, _out


@command("sign")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--key", type=key_file, required=True, help="Ed25519 private key (PEM or OpenSSH).")
@common_options
def sign_command(directory: Path, key: Path, as_json: bool) -> None:
    """Check every file of the artifact in DIRECTORY, then sign its manifest (writes manifest.sig)."""
    from ..artifact.sign import sign_artifact

    info = sign_artifact(directory, key)
    _out().result("sign", info.to_dict(), f"signed {directory} (key fingerprint {info.fingerprint}): {info.path}")
