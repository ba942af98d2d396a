"""`mlm-export verify DIRECTORY`: the signature, the file hashes, and every graph against PyTorch; with
`--integrity`, the torch-free check of a serving box instead (verify/integrity.py)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError, GraphCheckError, ParityError
from ..runtime.threads import max_threads
from ._common import command, common_options, quiet_option, key_file, verify_providers_choice, _out


@command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--integrity", is_flag=True,
              help="Torch-free: hashes, the signature (with --key), every graph loaded where it would serve and "
                   "given one smoke call. No source model needed.")
@click.option("--source", help="Model to compare against, if not the one recorded in the manifest.")
@click.option("--probe-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Realistic probe texts, one per line (UTF-8), used instead of the packaged set.")
@click.option("--providers", type=verify_providers_choice, default=None,
              help="cpu, cuda or auto [cpu; auto with --integrity] (int8 is judged on the CPU, bf16 on OpenVINO, "
                   "whatever this says).")
@click.option("--threads", type=click.IntRange(1, max_threads()), help="Inference threads (--integrity).")
@click.option("--key", type=key_file, help="Public key: require a valid signature of the manifest.")
@common_options
@quiet_option
def verify_command(directory: Path, integrity: bool, source: str | None, probe_file: Path | None,
                   providers: str | None, threads: int | None, key: Path | None, as_json: bool, quiet: bool) -> None:
    """Check the signature (with --key) and file hashes, then compare every graph with a fresh PyTorch model
    (with --integrity: load each graph where it would serve and give it one smoke call, without torch)."""
    if integrity:
        if source is not None or probe_file is not None:
            raise ConfigError("--integrity compares nothing with PyTorch: --source and --probe-file do not apply")
        from ..verify.integrity import check_integrity

        checked = check_integrity(directory, providers=providers or "auto", threads=threads, public_key=key)
        if not checked.passed:
            if not as_json:
                _out().echo(checked.summary())
            failed = ", ".join(g.name for g in checked.graphs if not g.passed)
            why = failed or "no graph can be loaded on this box (every one skipped: its backend is not installed)"
            raise GraphCheckError(f"integrity check failed: {why}", checked.to_dict())
        _out().result("integrity", checked.to_dict(), checked.summary())
        return
    if threads is not None:
        raise ConfigError("--threads applies to --integrity; parity runs take MLM_EXPORT_THREADS")
    from ..verify import read_probe_file, verify_artifact

    texts = read_probe_file(probe_file) if probe_file else None
    report = verify_artifact(directory, source=source, providers=providers or "cpu", probe_texts=texts,
                             public_key=key)
    if not report.passed:
        if not as_json:
            _out().echo(report.summary())
        raise ParityError("parity check failed", report)
    _out().result("verify", report.to_dict(), report.summary())
