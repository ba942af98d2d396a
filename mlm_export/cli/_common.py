"""What every command shares: where its result and errors go, the `--json`/`--debug`/`-q` options,
the option types, and the command class that keeps stdout for the result. Imports no command."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from .._stdio import stdout_to_stderr
from ..contracts import dumps, stamp
from ..errors import StorageError
from ..progress import live_bars

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Output:
    """Where a command's result and errors go: the real stdout (held aside while it runs) and stderr."""

    as_json: bool
    debug: bool
    stream: TextIO | None = None
    jsonl: bool = False  # stdout is a JSON Lines stream (score's rows): an error is one more line, one record

    def result(self, document: str, data: dict[str, Any], text: str) -> None:
        """Print the command's result: `text`, or under --json `data` as the `document` of contracts.py.
        A standard output that cannot take it (a full disk, /dev/full) is a StorageError."""
        self.echo(dumps(stamp(document, data)) if self.as_json else text)

    def echo(self, text: str) -> None:
        """Write `text` to the command's standard output; one that fails is a StorageError."""
        try:
            click.echo(text, file=self.stream)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the reader went away: the caller says nothing more
                raise
            self.stream_failed()
            raise StorageError(f"cannot write the result to standard output: {exc.strerror or exc}") from exc

    def stream_failed(self) -> None:
        """Stop writing to a standard output that failed: what it still buffers would fail again at exit
        (and print a traceback there), and an error document sent to it would fail the same way."""
        self.as_json = False
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, (self.stream or sys.stdout).fileno())
            os.close(devnull)

    def error(self, kind: str, message: str, exit_code: int, exc: BaseException | None = None,
              **details: Any) -> int:
        if self.debug and exc is not None:
            traceback.print_exception(exc, file=sys.stderr)
        click.echo(f"Error: {message}", err=True)
        if self.as_json:
            error = {"type": kind, "message": message, "exit_code": exit_code} | details
            try:
                click.echo(dumps(stamp("error", {"error": error}), indent=None if self.jsonl else 2),
                           file=self.stream)
            except OSError:  # stdout itself failed: the Error line on stderr is all that can be said
                self.stream_failed()
        return exit_code


class _Command(click.Command):
    """While the command body runs, stdout belongs to its result; library chatter (and, on a terminal,
    progress bars) goes to stderr.

    Only the body: help, version and usage errors come before it and print normally.
    """

    def invoke(self, ctx: click.Context) -> Any:
        output = ctx.find_object(_Output)
        if "quiet" in ctx.params:  # the commands with long steps: their progress lines, unless -q
            _setup_logging(ctx.params["quiet"])
        bars = not (ctx.params.get("quiet") or ctx.params.get("as_json"))  # and only on a terminal
        with stdout_to_stderr() as stream, live_bars(bars):
            if output is not None:
                output.stream = stream
            try:
                return super().invoke(ctx)
            finally:
                if output is not None:
                    output.stream = None  # back to the real sys.stdout, for the error path


def command(name: str) -> Callable[[Callable[..., Any]], _Command]:
    """`@command("export")`: a command of the `mlm-export` group, registered in `cli/__init__.py`."""
    return click.command(name, cls=_Command)


def _out() -> _Output:
    output = click.get_current_context().find_object(_Output)
    return output if output is not None else _Output(as_json=False, debug=False)  # invoked without main()


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("mlm_export")
    for old in [h for h in logger.handlers if h.get_name() == "mlm-export-cli"]:
        logger.removeHandler(old)  # bound to an earlier sys.stderr (e.g. a previous CliRunner call)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("mlm-export-cli")
    handler.setFormatter(logging.Formatter("mlm-export: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def common_options(command: F) -> F:
    """--json and --debug on every command (main() reads them before parsing)."""
    command = click.option("--debug", is_flag=True, expose_value=False,
                           help="Print the traceback of an error (also MLM_EXPORT_DEBUG=1).")(command)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout; errors too.")(command)


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, shown in the order given."""
    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


# INPUT as `score` and `encode` read it (batch/inputs.py)
input_options = _options(
    click.option("--column", help="The CSV/Parquet column with the sequences [text, or sequence]."),
    click.option("--format", "input_format", type=click.Choice(["text", "fasta", "csv", "parquet"]),
                 help="How to read INPUT [from its suffix: .txt, .fa/.fasta, .csv, .parquet]."),
    click.option("--keep-columns", metavar="NAMES",
                 help="Comma-separated input columns to copy into every row ('' for none) [all but the "
                      "sequences; FASTA: id,description]."))
# the engine of a batch job: this process, or a Ray Data actor pool (batch/ray_engine.py)
engine_options = _options(
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True),
    click.option("--ray-address", help="Join this Ray cluster [RAY_ADDRESS, else a local instance]."),
    click.option("--workers", type=click.IntRange(1, None), help="Ray actors [cluster CPUs / threads]."))
STDOUT_NAMES = ("-", "/dev/stdout", "/proc/self/fd/1", "/dev/fd/1")  # an --output that means stdout


def kept_names(value: str | None) -> tuple[str, ...] | None:
    """--keep-columns: None keeps every column; '' keeps none."""
    if value is None:
        return None
    return tuple(name.strip() for name in value.split(",") if name.strip())


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")
key_file = click.Path(exists=True, dir_okay=False, path_type=Path)
# the strings the library takes (its explicit lists of ONNX Runtime providers are for Python callers):
# a typo is a usage error, exit 2, like any other bad option value. verify judges bf16 on OpenVINO
# whatever it is given, so openvino is no choice there.
providers_choice = click.Choice(["auto", "cpu", "cuda", "openvino"], case_sensitive=False)
verify_providers_choice = click.Choice(["auto", "cpu", "cuda"], case_sensitive=False)


class LazyChoice(click.Choice):
    """A Choice whose values come from the library on first use (help or parsing), so that importing a
    command's module, as the CLI's start does for every command, loads no heavy library module."""

    def __init__(self, load: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._load = load  # `choices` is left unset: __getattr__ fills it in when it is first read
        self.case_sensitive = case_sensitive

    def __getattr__(self, name: str) -> Any:
        if name != "choices":
            raise AttributeError(name)
        self.choices = tuple(self._load())
        return self.choices
