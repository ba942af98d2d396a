"""The peer benchmark: mlm-export's predictor against transformers, torch bf16, optimum and OpenVINO.

Run from a checkout of the repository (it is not part of the installed package):

    python -m benchmarks                                  # bert-base-sized and AntiBERTy, every system
    python -m benchmarks --model antiberty --rounds 0.3
    python -m benchmarks --json                           # the bench-v1 document on stdout

Needs the `export` and `bench` extras. Under `--json`, stdout holds one document, `bench-v1`
(benchmarks/schemas/bench-v1.schema.json), or on failure mlm-export's `error-v1`. Exit codes as
mlm-export's: 0 ok, 1 error, 2 usage, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from mlm_export.contracts import dumps

SCHEMA = "bench-v1"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
PROG = "python -m benchmarks"


def load_schema(name: str = SCHEMA) -> dict[str, Any]:
    """A JSON Schema of benchmarks/schemas/, by name; KeyError for one that does not exist."""
    path = SCHEMAS / f"{name}.schema.json"
    if not path.is_file():
        raise KeyError(f"no schema {name!r} in {SCHEMAS}")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def validate(document: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` unless `document` matches benchmarks/schemas/bench-v1."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(document.get("schema", SCHEMA)))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        raise error


def _setup_logging(quiet: bool) -> None:
    """The harness reports through mlm-export's logger ("bench: ..."), on stderr."""
    logger = logging.getLogger("mlm_export")
    for old in [h for h in logger.handlers if h.get_name() == "mlm-export-bench"]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("mlm-export-bench")
    handler.setFormatter(logging.Formatter("mlm-export: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _threads_limit() -> int:
    """The most inference threads mlm-export accepts here (4 x the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 4 * max(1, cpus)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "models", multiple=True,
              help="bert-base, antiberty or a local model directory (repeatable) [bert-base, antiberty].")
@click.option("--system", "systems", multiple=True, help="Limit to these systems (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/work"), show_default=True,
              help="Cache for the exported models the systems load.")
@click.option("--threads", type=click.IntRange(1, _threads_limit()), default=2, show_default=True)
@click.option("--rounds", "round_scale", type=click.FloatRange(0.01, None), default=1.0, show_default=True,
              help="Scale every workload's number of timed rounds.")
@click.option("--debug", is_flag=True, expose_value=False,
              help="Print the traceback of an error (also MLM_EXPORT_DEBUG=1).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout; errors too.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")
def bench(models: tuple[str, ...], systems: tuple[str, ...], out: Path, work: Path,
          threads: int, round_scale: float, as_json: bool, quiet: bool) -> None:
    """Time OnnxMaskFiller against transformers, torch bf16 and optimum, side by side."""
    from mlm_export._stdio import stdout_to_stderr
    from mlm_export.progress import live_bars

    from .harness import SYSTEMS, BenchConfig, run_benchmark

    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise click.BadParameter(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}",
                                 param_hint="--system")
    _setup_logging(quiet)
    config = BenchConfig(models=models or ("bert-base", "antiberty"), systems=systems or SYSTEMS,
                         out=out, work=work, threads=threads, round_scale=round_scale)
    # stdout is for the result: the exports' and the workers' chatter goes to stderr meanwhile
    with stdout_to_stderr() as stream, live_bars(not (quiet or as_json)):
        summary = run_benchmark(config)
        text = (f"{summary['table']}\nwrote {out / 'bench.json'}, {out / 'bench.md'}"
                + (f", {summary['chart']}" if summary["chart"] else ""))
        document = {"schema": SCHEMA} | {k: v for k, v in summary.items() if k != "table"}
        click.echo(dumps(document) if as_json else text, file=stream)


def main(args: list[str] | None = None) -> int:
    """Run the benchmark command; return its exit code (mlm-export's: 1 error, 2 usage, 130 Ctrl-C)."""
    from mlm_export.errors import MlmExportError
    from mlm_export.interrupts import signals_as_interrupts

    args = list(sys.argv[1:] if args is None else args)
    options = args[: args.index("--")] if "--" in args else args
    as_json = "--json" in options
    debug = "--debug" in options or os.environ.get("MLM_EXPORT_DEBUG", "") not in ("", "0")

    def error(kind: str, message: str, code: int, exc: BaseException) -> int:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        click.echo(f"Error: {message}", err=True)
        if as_json:
            click.echo(dumps({"schema": "error-v1", "error": {"type": kind, "message": message,
                                                               "exit_code": code}}))
        return code

    with signals_as_interrupts():
        try:
            bench.main(args, prog_name=PROG, standalone_mode=False)
            return 0
        except MlmExportError as exc:
            return error(type(exc).__name__, str(exc), exc.exit_code, exc)
        except click.ClickException as exc:
            if as_json:
                kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__
                return error(kind, exc.format_message(), exc.exit_code, exc)
            exc.show()
            return exc.exit_code
        except (click.Abort, KeyboardInterrupt) as exc:
            cause = exc.__cause__ if isinstance(exc, click.Abort) else exc
            if not isinstance(cause, KeyboardInterrupt):
                return error("Aborted", "aborted: end of input", 1, exc)
            return error("Interrupted", str(cause) or "interrupted (SIGINT)", getattr(cause, "exit_code", 130), exc)
        except Exception as exc:
            return error("InternalError", f"unexpected {type(exc).__name__}: {exc} (run with --debug for the "
                         "traceback)", 1, exc)


if __name__ == "__main__":
    sys.exit(main())
