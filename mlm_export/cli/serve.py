"""`mlm-export serve DIRECTORY`: an HTTP server for every task the artifact holds (the `serve` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ServeError
from ..runtime.threads import max_threads
from ._common import command, common_options, key_file, providers_choice, quiet_option

if TYPE_CHECKING:
    from ..serve import Service

SERVE_INSTALL_HINT = "pip install 'mlm-export[serve]'"


@command("serve")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free one, printed when ready).")
@click.option("--variant", help="Precision or graph to serve (int8, fp32, sparse.int8...); default: per task, the "
                                "best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (the bf16 variant).")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads of the one inference worker [ONNX Runtime's default: one per core].")
@click.option("--max-batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Texts per graph run, gathered across concurrent requests.")
@click.option("--max-wait-ms", type=click.FloatRange(0, 60_000), default=5.0, show_default=True,
              help="How long a request waits for others to share its run.")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Requests queued at most; more are answered 503 with Retry-After.")
@click.option("--max-body-bytes", type=click.IntRange(1, None), default=2 * 1024 * 1024, show_default=True,
              help="Largest request body; a larger one is answered 413 before it is read.")
@click.option("--max-inputs", type=click.IntRange(1, 1_000_000), default=1024, show_default=True,
              help="Texts (or mutations) in one request at most; more are answered 413.")
@click.option("--timeout", type=click.FloatRange(0.001, 1e6), default=60.0, show_default=True,
              help="Seconds a request may wait and run; later it is answered 503 and its work dropped.")
@click.option("--grace-period", type=click.FloatRange(0, 1e6), default=30.0, show_default=True,
              help="After SIGTERM/SIGINT: seconds accepted requests may take to finish.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@quiet_option
@common_options
def serve_command(directory: Path, host: str, port: int, variant: str | None, providers: str, threads: int | None,
                  max_batch_size: int, max_wait_ms: float, max_queue: int, max_body_bytes: int, max_inputs: int,
                  timeout: float, grace_period: float, key: Path | None, quiet: bool, as_json: bool) -> None:
    """Serve the artifact in DIRECTORY over HTTP: POST /fill-mask, /score, /variants, /embed, /embed_sparse (those
    its tasks allow), GET /health, /info, /metrics. Runs until SIGTERM or Ctrl-C, then finishes every accepted
    request and exits 0 (1 when --grace-period ran out first)."""
    try:
        from ..serve import ServeOptions, run_server
    except ImportError as exc:
        raise ServeError(f"serving needs the serve extra ({exc.name} is missing): {SERVE_INSTALL_HINT}") from exc

    options = ServeOptions(host, port, variant, providers, threads, max_batch_size, max_wait_ms, max_queue,
                           max_body_bytes, max_inputs, timeout, grace_period)

    def ready(url: str, service: Service) -> None:  # also under -q: with --port 0 it is how the port is known
        served = "; ".join(f"{task}: {m.variant} on {m.provider}" for task, m in service.models.items())
        click.echo(f"mlm-export: serving {directory} ({served}) at {url}", err=True)

    run_server(directory, options, public_key=key, on_ready=ready)
