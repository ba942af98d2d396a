"""`mlm-export keygen PATH`: an Ed25519 key pair for `sign`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import command, common_options, _out


@command("keygen")
@click.argument("path", type=click.Path(path_type=Path))
@common_options
def keygen_command(path: Path, as_json: bool) -> None:
    """Create an Ed25519 key pair for `sign`: PATH (private, mode 600) and PATH.pub; never overwrites."""
    from ..artifact.signature import fingerprint, generate_key, load_public_key

    private, public = generate_key(path)
    fp = fingerprint(load_public_key(public))
    _out().result("keygen", {"private_key": str(private), "public_key": str(public), "fingerprint": fp},
                  f"wrote {private} (keep it secret) and {public} (fingerprint {fp})")
