"""The `mlm-export` group: the bare-MODEL shorthand for `export`, and the one error path of every command.

One error path for every command: a failure ends in one `Error: ...` line on stderr (and, under
`--json`, one `{"error": {"type", "message", "exit_code"}}` document on stdout) with its exit code.
A traceback is printed only with `--debug` (or MLM_EXPORT_DEBUG=1).

Exit codes: 0 success, 1 error, 2 usage, 3 parity failure, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM), 129 hung up (SIGHUP).

The commands live one per module beside this one and are added to the group in `cli/__init__.py`.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from ..errors import MlmExportError, ParityError
from ..interrupts import signals_as_interrupts
from ..manifest import FORMAT_VERSION
from ._common import _Command, _Output

INTERRUPT_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
# commands that left the package, and where they went: a usage error (exit 2), not an export of a model
# of that name (unless a directory of that name is there to export)
REMOVED_COMMANDS = {"bench": "the peer benchmark is no longer an mlm-export command: run `python -m benchmarks` "
                             "from a checkout of the source repository (same options)"}


def _flag(args: list[str], *names: str) -> bool:
    """Whether a flag was given, known before parsing so that even usage errors honour --json."""
    options = args[: args.index("--")] if "--" in args else args
    return any(name in options for name in names)


class _Cli(click.Group):
    """`mlm-export MODEL ...` means `mlm-export export MODEL ...`; every command shares one error path."""

    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in REMOVED_COMMANDS and not os.path.exists(args[0]):
            raise click.UsageError(REMOVED_COMMANDS[args[0]], ctx)
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["export", *args]
        return super().parse_args(ctx, args)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        try:
            os.getcwd()
        except FileNotFoundError:  # torch and MKL die with a native error when started from here
            click.echo("Error: the current directory no longer exists; cd to an existing one", err=True)
            sys.exit(1)
        output = _Output(as_json=_flag(args, "--json"),
                         debug=_flag(args, "--debug") or os.environ.get("MLM_EXPORT_DEBUG", "") not in ("", "0"))
        with signals_as_interrupts():
            code = self._guarded(output, args, prog_name, complete_var, extra)
        sys.exit(code)

    def _guarded(self, output: _Output, args: list[str], prog_name: str | None, complete_var: str | None,
                 extra: dict[str, Any]) -> int:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, obj=output, **extra)
            return code if isinstance(code, int) else 0
        except ParityError as exc:
            report = exc.report.to_dict() if exc.report is not None else None
            return output.error("ParityError", str(exc), exc.exit_code, exc, report=report)
        except MlmExportError as exc:
            report = getattr(exc, "report", None)  # GraphCheckError: the integrity report
            return output.error(type(exc).__name__, str(exc), exc.exit_code, exc,
                                **({"report": report} if report is not None else {}))
        except click.ClickException as exc:
            if output.as_json:
                kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__
                return output.error(kind, exc.format_message(), exc.exit_code, exc)
            exc.show()  # click's own "Usage: ... Error: ..." text
            return exc.exit_code
        except click.Abort as exc:  # click turns KeyboardInterrupt (so Interrupted) and EOFError into Abort
            if not isinstance(exc.__cause__, KeyboardInterrupt):
                return output.error("Aborted", "aborted: end of input", 1, exc)
            return self._interrupted(output, exc.__cause__)
        except KeyboardInterrupt as exc:  # raised outside click's own handler
            return self._interrupted(output, exc)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # the reader of our stdout went away: nothing left to say
                return 1
            return output.error(type(exc).__name__, f"{exc} (run with --debug for details)", 1, exc)
        except Exception as exc:
            return output.error("InternalError", f"unexpected {type(exc).__name__}: {exc}. This is a bug "
                                "in mlm-export; please report it with the output of --debug", 1, exc)

    @staticmethod
    def _interrupted(output: _Output, exc: KeyboardInterrupt) -> int:
        message = str(exc) or "interrupted (SIGINT)"
        return output.error("Interrupted", f"{message}; nothing half-written was left (an output appears "
                            "whole or not at all)",
                            getattr(exc, "exit_code", INTERRUPT_EXIT), exc)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlm-export",
                      message=f"%(prog)s, version %(version)s (artifact format {FORMAT_VERSION})")
def main() -> None:
    """Export a masked language model to a verified, optimized ONNX artifact, and serve it.

    \b
    mlm-export MODEL [OPTIONS]       same as `mlm-export export MODEL`
    MODEL is a local Hugging Face directory, a hub id, or the built-in name `antiberty`.
    Exit codes: 0 ok, 1 error, 2 usage, 3 parity failure, 130 Ctrl-C, 143 SIGTERM.
    """
