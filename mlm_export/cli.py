"""Command line: parses arguments and calls the library; no pipeline logic lives here.

One error path for every command: a failure ends in one `Error: ...` line on stderr (and, under
`--json`, one `{"error": {"type", "message", "exit_code"}}` document on stdout) with its exit code.
A traceback is printed only with `--debug` (or MLM_EXPORT_DEBUG=1).

Exit codes: 0 success, 1 error, 2 usage, 3 parity failure, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM), 129 hung up (SIGHUP).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from ._stdio import stdout_to_stderr
from .config import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .contracts import stamp
from .manifest import FORMAT_VERSION
from .errors import MlmExportError, ParityError
from .interrupts import signals_as_interrupts
from .progress import live_bars
from .passes.int8 import INT8_RECIPE_NAMES
from .runtime.providers import max_threads

INTERRUPT_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C


@dataclass
class _Output:
    """Where a command's result and errors go: the real stdout (held aside while it runs) and stderr."""

    as_json: bool
    debug: bool
    stream: TextIO | None = None

    def result(self, document: str, data: dict[str, Any], text: str) -> None:
        """Print the command's result: `text`, or under --json `data` as the `document` of contracts.py."""
        click.echo(_json(stamp(document, data)) if self.as_json else text, file=self.stream)

    def error(self, kind: str, message: str, exit_code: int, exc: BaseException | None = None,
              **details: Any) -> int:
        if self.debug and exc is not None:
            traceback.print_exception(exc, file=sys.stderr)
        click.echo(f"Error: {message}", err=True)
        if self.as_json:
            error = {"type": kind, "message": message, "exit_code": exit_code} | details
            click.echo(_json(stamp("error", {"error": error})), file=self.stream)
        return exit_code


def _json(data: Any) -> str:
    """Strict JSON: NaN and infinity (e.g. in a broken graph's parity figures) become null."""
    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, allow_nan=False)


def _flag(args: list[str], *names: str) -> bool:
    """Whether a flag was given, known before parsing so that even usage errors honour --json."""
    options = args[: args.index("--")] if "--" in args else args
    return any(name in options for name in names)


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


class _Cli(click.Group):
    """`mlm-export MODEL ...` means `mlm-export export MODEL ...`; every command shares one error path."""

    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
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
                 extra: dict) -> int:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, obj=output, **extra)
            return code if isinstance(code, int) else 0
        except ParityError as exc:
            report = exc.report.to_dict() if hasattr(exc.report, "to_dict") else None
            return output.error("ParityError", str(exc), exc.exit_code, exc, report=report)
        except MlmExportError as exc:
            return output.error(type(exc).__name__, str(exc), exc.exit_code, exc)
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
        return output.error("Interrupted", f"{message}; nothing half-written was left (an export leaves its "
                            "complete artifact or nothing)",
                            getattr(exc, "exit_code", INTERRUPT_EXIT), exc)


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


def common_options(command: Any) -> Any:
    """--json and --debug on every command (main() reads them before parsing)."""
    command = click.option("--debug", is_flag=True, expose_value=False,
                           help="Print the traceback of an error (also MLM_EXPORT_DEBUG=1).")(command)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout; errors too.")(command)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")
key_file = click.Path(exists=True, dir_okay=False, path_type=Path)
# the strings the library takes (its explicit lists of ONNX Runtime providers are for Python callers):
# a typo is a usage error, exit 2, like any other bad option value. verify judges bf16 on OpenVINO
# whatever it is given, so openvino is no choice there.
providers_choice = click.Choice(["auto", "cpu", "cuda", "openvino"], case_sensitive=False)
verify_providers_choice = click.Choice(["auto", "cpu", "cuda"], case_sensitive=False)


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


@main.command("export")
@click.argument("model")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Artifact directory [models/<name>].")
@click.option("--force", is_flag=True,
              help="Replace an existing mlm-export artifact at --out (never other directories).")
@click.option("--revision", help="Hub revision (branch, tag or commit) for a hub id.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True)
@click.option("--fp16", is_flag=True, help="Add an fp16 fill-mask variant (for the CUDA provider).")
@click.option("--int8", is_flag=True, help="Add an int8 fill-mask variant (for the CPU provider).")
@click.option("--int8-recipe", type=click.Choice(("auto",) + INT8_RECIPE_NAMES), default="auto",
              show_default=True,
              help="int8 quantization recipe (implies --int8); auto keeps the fastest that passes the gate.")
@click.option("--bf16", is_flag=True,
              help="Add a bf16 variant for OpenVINO (predict --providers openvino): encoder in bf16, MLM head in "
                   "float32. Needs the openvino extra and a CPU with AVX-512 BF16 or AMX.")
@click.option("--allow-unfused", is_flag=True,
              help="Export even if attention did not fuse in every layer (recorded in the manifest).")
@click.option("--probe-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Realistic texts for the accuracy gates, one per line (UTF-8); stored in the artifact.")
@common_options
@quiet_option
def export_command(model: str, out: Path | None, force: bool, revision: str | None, opset: int,
                   fp16: bool, int8: bool, int8_recipe: str, bf16: bool, allow_unfused: bool,
                   probe_file: Path | None, as_json: bool, quiet: bool) -> None:
    """Export MODEL, fuse it, verify every graph against PyTorch, and write the artifact."""
    from .exporter.pipeline import export_model
    from .config import ExportConfig
    from .verify import read_probe_file

    config = ExportConfig(model=model, out=out, revision=revision, force=force,
                          allow_unfused=allow_unfused, opset=opset, fp16=fp16,
                          int8=int8 or int8_recipe != "auto", int8_recipe=int8_recipe, bf16=bf16,
                          probe_texts=tuple(read_probe_file(probe_file)) if probe_file else ())
    result = export_model(config)
    _out().result("export", {"path": str(result.path), "manifest": result.manifest.to_dict()},
                  f"{result.report.summary()}\nwrote {result.path}")


@main.command("verify")
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
    from .verify import read_probe_file, verify_artifact

    texts = read_probe_file(probe_file) if probe_file else None
    report = verify_artifact(directory, source=source, providers=providers, probe_texts=texts, public_key=key)
    if not report.passed:
        if not as_json:
            click.echo(report.summary(), file=_out().stream)
        raise ParityError("parity check failed", report)
    _out().result("verify", report.to_dict(), report.summary())


@main.command("predict")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--top-k", "-k", type=click.IntRange(1, None), default=5, show_default=True)
@click.option("--variant", help="Graph variant (e.g. fp32); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (runs the bf16 variant).")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads, ONNX Runtime intra-op or OpenVINO (1 to 4 x the CPUs this process may use).")
@click.option("--no-sequence", is_flag=True, help="Leave out each candidate's filled-in sequence.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@common_options
def predict_command(directory: Path, texts: tuple[str, ...], top_k: int, variant: str | None,
                    providers: str, threads: int | None, no_sequence: bool, key: Path | None,
                    as_json: bool) -> None:
    """Fill the mask tokens ([MASK], <mask>, ...) of each TEXT with the artifact in DIRECTORY."""
    from .runtime.predictor import OnnxMaskFiller

    filler = OnnxMaskFiller.from_pretrained(directory, variant=variant, providers=providers, threads=threads,
                                            public_key=key)
    results = filler(list(texts), top_k=top_k, return_sequence=not no_sequence)
    if len(texts) == 1:  # the filler, like the pipeline, gives a one-element list its element's result
        results = [results]
    lines = []
    for text, result in zip(texts, results):
        lines.append(text)
        masks = [result] if result and isinstance(result[0], dict) else result
        for n, candidates in enumerate(masks, 1):
            if len(masks) > 1:
                lines.append(f"  mask {n}:")
            for rank, c in enumerate(candidates, 1):
                lines.append(f"  {rank:>2}. {c['token_str']:<12} {c['score']:.4f}  {c.get('sequence', '')}".rstrip())
    _out().result("predict", {"variant": filler.variant, "provider": filler.provider, "results": results},
                  "\n".join(lines))


@main.command("score")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="A .jsonl or .parquet file [JSON Lines on stdout].")
@click.option("--column", help="The CSV/Parquet column with the sequences [text, or sequence].")
@click.option("--reduction", type=click.Choice(["sum", "mean"]), default="sum", show_default=True,
              help="sum: Salazar et al.'s PLL; mean: per scored token.")
@click.option("--exclude-special", is_flag=True,
              help="Softmax over the vocabulary without its special tokens (AntiBERTy's convention).")
@click.option("--per-token", is_flag=True, help="Add each scored token's log-probability.")
@click.option("--variant", help="Graph variant (e.g. int8); default: best for the provider.")
@click.option("--providers", type=providers_choice, default="auto", show_default=True,
              help="auto, cpu, cuda, or openvino (the bf16 variant); Ray's CPU workers take auto, cpu or openvino.")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads, ONNX Runtime intra-op or OpenVINO (per actor with --engine ray).")
@click.option("--batch-size", type=click.IntRange(1, None), default=128, show_default=True,
              help="Masked copies per graph run.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Join this Ray cluster [RAY_ADDRESS, else a local instance].")
@click.option("--workers", type=click.IntRange(1, None), help="Ray actors [cluster CPUs / threads].")
@click.option("--strict", is_flag=True, help="Stop at the first bad row; no --output file is written.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--key", type=key_file, help="Public key: refuse an artifact without a valid signature.")
@quiet_option
@common_options
def score_command(directory: Path, input_path: Path, output: Path | None, column: str | None, reduction: str,
                  exclude_special: bool, per_token: bool, variant: str | None, providers: str,
                  threads: int | None, batch_size: int, engine: str, ray_address: str | None,
                  workers: int | None, strict: bool, force: bool, key: Path | None, quiet: bool,
                  as_json: bool) -> None:
    """Pseudo-log-likelihood of every sequence in INPUT with the artifact in DIRECTORY.

    INPUT is a text file (one sequence per line), or a .csv/.parquet file with --column. Each output
    row holds line, text, pll and n_tokens, in input order; a row that cannot be scored holds `error`
    instead (and a warning names its line) unless --strict.
    """
    from .batch import ScoreJob, score_file
    from .runtime.scoring import ScoreOptions

    output_ = _out()
    job = ScoreJob(directory, input_path, output, column,
                   ScoreOptions(reduction, exclude_special, per_token, batch_size), variant, providers, threads,
                   strict, force, engine, ray_address, workers, progress=not (quiet or as_json), public_key=key)
    summary = score_file(job, stdout=output_.stream)
    failed = f"; {len(summary.failed)} not scored (lines {', '.join(str(n) for n, _ in summary.failed[:10])}" \
             f"{', ...' if len(summary.failed) > 10 else ''})" if summary.failed else ""
    rate = f" ({summary.rows / summary.seconds:.1f}/s)" if summary.seconds else ""
    logging.getLogger("mlm_export").info("scored %d of %d sequences with %s in %.1f s%s%s", summary.scored,
                                         summary.rows, summary.variant, summary.seconds, rate, failed)
    if output is not None and as_json:
        output_.result("score", summary.to_dict(), "")


@main.command("triton")
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
    from .triton import write_triton_repository

    model = write_triton_repository(directory, repo, variant=variant, name=name, max_batch_size=max_batch_size,
                                    instances=instances, device=device, public_key=key)
    _out().result("triton", {"name": model.name, "variant": model.variant, "config": str(model.config_path),
                   "model": str(model.model_path), "max_batch_size": model.max_batch_size, "device": model.device},
                  f"wrote {model.config_path} and {model.model_path} ({model.variant}, "
                  f"max_batch_size {model.max_batch_size}, {model.device})")


@main.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@common_options
def info_command(directory: Path, as_json: bool) -> None:
    """Show what an artifact holds: source, and per graph its size, fusion and parity."""
    from .artifact import left_out, present_graphs
    from .manifest import read_manifest
    from .runtime.predictor import auto_provider, preferred_variant
    from .signing import signature_fingerprint

    manifest = read_manifest(directory)
    present = present_graphs(directory, manifest)  # a slim copy: the graphs it holds
    absent = left_out(manifest, present)
    provider = auto_provider(present.fill_mask_graphs)
    default = preferred_variant(present, provider)
    signed = signature_fingerprint(directory)
    if as_json:
        _out().result("info", manifest.to_dict() | {"default_variant": {"provider": provider, "variant": default},
                                                    "signature": {"fingerprint": signed} if signed else None}
                      | ({"absent_graphs": list(absent)} if absent else {}), "")
        return
    src, model, tok = manifest.source, manifest.model, manifest.tokenizer
    specials = " ".join(tok.special_tokens[role] for role in ("cls", "sep", "mask", "pad", "unk"))
    lines = [
        f"{manifest.name}  ({manifest.family}, {model.architecture}; {src.kind}: {src.location})",
        f"  {model.num_layers} layers, hidden {model.hidden_size}, vocab {model.vocab_size}, max length "
        f"{model.max_length}, {model.float32_parameter_bytes / 1e6:.1f} MB float32 parameters",
        f"  tokenizer: {tok.scheme}; special tokens {specials}; graph inputs "
        + ", ".join(n for n in next(iter(manifest.graphs.values())).input_names),
        f"  opset {manifest.opset}; " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()),
        f"  realistic probe set: {manifest.probe_set or 'none (synthetic probes only)'}",
        f"  default variant here: {default or 'none (no fill-mask graph)'} ({provider})",
        f"  signature: {'signed, key fingerprint ' + signed + ' (check it with verify --key)' if signed else 'none'}",
    ]
    if absent:
        lines.append(f"  slim copy: {', '.join(absent)} left out (listed below, not on disk)")
    def size_of(graph: Any) -> int:  # with its external data, where it has some
        return manifest.files[graph.file].size + (manifest.files[graph.data_file].size if graph.data_file else 0)

    fp32_size = size_of(manifest.graphs.get("fp32") or next(iter(manifest.graphs.values()))) or 1
    rows = [("graph", "file", "MB", "%fp32", "attention", "gated on", "positions", "max|Δlogit|",
             "top1", "top5-ovl", "top5-set", "provider", "gate")]
    for name, g in manifest.graphs.items():
        size = size_of(g)
        fusion = g.fusion
        p = g.parity or {}
        if not fusion:
            attention = "-"
        elif fusion.get("mode") == "none":
            attention = "none"
        else:
            attention = f"{fusion['attention']}/{fusion['expected_attention']}"
        rows.append((
            name, g.file, f"{size / 1e6:.1f}", f"{100 * size / fp32_size:.0f}%", attention,
            p.get("gated_on", "-"), str(p.get("masked_positions", "-")),
            f"{p['max_abs_logit']:.2e}" if p else "-",
            f"{p['top1_agreement']:.2%}" if p else "-", f"{p['topk_overlap']:.2%}" if p else "-",
            f"{p['topk_set_equal']:.2%}" if p else "-",
            p.get("provider", "-").replace("ExecutionProvider", ""),
            "absent (slim)" if name in absent else ("pass" if p.get("passed") else "FAIL") if p else "not verified"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("  gates: " + "; ".join(
        f"{name} " + ", ".join(filter(None, [
            (f"max|Δlogit|<={t.max_abs_logit:g}" + (f" or {t.max_rel_logit:g}x max|logit|" if t.max_rel_logit else ""))
            if t.max_abs_logit is not None else "",
            f"top1>={t.min_top1_agreement:.1%}", f"top{t.top_k}-overlap>={t.min_topk_overlap:.0%}",
            f"max|Δprob|<={t.max_abs_prob:g}" if t.max_abs_prob is not None else ""]))
        for name, t in ((name, g.tolerance) for name, g in manifest.graphs.items())))
    bf16 = manifest.graphs.get("bf16")
    if bf16 and bf16.head_input:
        lines.append(f"  bf16 runs on OpenVINO (--providers openvino): the encoder in bf16, the MLM head in float32 "
                     f"from {bf16.head_input}")
    int8 = manifest.graphs.get("int8")
    if int8 and int8.recipe:
        tried = ", ".join(f"{t['recipe']}{' + int8-blockwise decoder' if t.get('head') == 'int8-blockwise' else ''} "
                          f"{'pass' if t['passed'] else 'fail'} (top1 {t['top1_agreement']:.2%}, "
                          f"overlap {t['topk_overlap']:.2%})" for t in int8.recipes_tried)
        how = f"; tried {tried}" if tried else " (chosen by hand)"
        head = f", {int8.head} MLM decoder" if int8.head else ""
        lines.append(f"  quantization recipe for int8: {int8.recipe}{head}{how}")
    click.echo("\n".join(lines), file=_out().stream)


@main.command("slim")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--keep", multiple=True, required=True,
              help="A graph to keep (repeatable, or comma-separated), e.g. --keep int8.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="The slim artifact's directory.")
@click.option("--force", is_flag=True, help="Replace an existing mlm-export artifact at --out.")
@common_options
def slim_command(directory: Path, keep: tuple[str, ...], out: Path, force: bool, as_json: bool) -> None:
    """Copy the artifact in DIRECTORY with only the graphs to --keep: a serving artifact, still hash-checked
    and, if it was signed, still verifiable with the same key."""
    from .slim import slim_artifact

    result = slim_artifact(directory, out, keep, force)
    _out().result("slim", result.to_dict(),
                  f"wrote {out}: {', '.join(result.kept)} ({result.bytes / 1e6:.1f} MB of "
                  f"{result.bytes_before / 1e6:.1f} MB); left out {', '.join(result.absent) or 'nothing'}")


@main.command("schema")
@click.argument("name", required=False)
@common_options
def schema_command(name: str | None, as_json: bool) -> None:
    """Print the JSON Schema NAME (e.g. export-v2, error-v1, manifest-v3), or list them all.

    Every --json document names its schema in its "schema" field. A schema is JSON already: NAME
    prints the same with or without --json.
    """
    from .contracts import load_schema, schema_names

    if name is None:
        _out().result("schema", {"schemas": schema_names()}, "\n".join(schema_names()))
        return
    try:
        schema = load_schema(name)
    except KeyError:
        raise click.BadParameter(f"no schema {name!r}; choose from {', '.join(schema_names())}",
                                 param_hint="NAME") from None
    click.echo(json.dumps(schema, indent=2), file=_out().stream)


@main.command("sign")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--key", type=key_file, required=True, help="Ed25519 private key (PEM or OpenSSH).")
@common_options
def sign_command(directory: Path, key: Path, as_json: bool) -> None:
    """Check every file of the artifact in DIRECTORY, then sign its manifest (writes manifest.sig)."""
    from .signing import sign_artifact

    info = sign_artifact(directory, key)
    _out().result("sign", info.to_dict(), f"signed {directory} (key fingerprint {info.fingerprint}): {info.path}")


@main.command("keygen")
@click.argument("path", type=click.Path(path_type=Path))
@common_options
def keygen_command(path: Path, as_json: bool) -> None:
    """Create an Ed25519 key pair for `sign`: PATH (private, mode 600) and PATH.pub; never overwrites."""
    from .signing import fingerprint, generate_key, load_public_key

    private, public = generate_key(path)
    fp = fingerprint(load_public_key(public))
    _out().result("keygen", {"private_key": str(private), "public_key": str(public), "fingerprint": fp},
                  f"wrote {private} (keep it secret) and {public} (fingerprint {fp})")


@main.command("bench")
@click.option("--model", "models", multiple=True,
              help="bert-base, antiberty or a local model directory (repeatable) [bert-base, antiberty].")
@click.option("--system", "systems", multiple=True, help="Limit to these systems (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/work"), show_default=True,
              help="Cache for the exported models the systems load.")
@click.option("--threads", type=click.IntRange(1, max_threads()), default=2, show_default=True)
@click.option("--rounds", "round_scale", type=click.FloatRange(0.01, None), default=1.0, show_default=True,
              help="Scale every workload's number of timed rounds.")
@common_options
@quiet_option
def bench_command(models: tuple[str, ...], systems: tuple[str, ...], out: Path, work: Path, threads: int,
                  round_scale: float, as_json: bool, quiet: bool) -> None:
    """Time OnnxMaskFiller against transformers, torch bf16 and optimum, side by side."""
    harness = _benchmark_harness()
    unknown = sorted(set(systems) - set(harness.SYSTEMS))
    if unknown:
        raise click.BadParameter(f"unknown system(s) {unknown}; choose from {', '.join(harness.SYSTEMS)}",
                                 param_hint="--system")
    config = harness.BenchConfig(models=models or ("bert-base", "antiberty"), systems=systems or harness.SYSTEMS,
                                 out=out, work=work, threads=threads, round_scale=round_scale)
    summary = harness.run_benchmark(config)
    _out().result("bench", {k: v for k, v in summary.items() if k != "table"},
                  f"{summary['table']}\nwrote {out / 'bench.json'}, {out / 'bench.md'}"
                  + (f", {summary['chart']}" if summary["chart"] else ""))


def _benchmark_harness() -> Any:
    """benchmarks/harness.py from a source checkout: the peer benchmark is not part of the wheel."""
    import importlib

    for root in (Path(__file__).resolve().parents[1], Path.cwd()):  # the checkout this package runs from first
        if (root / "benchmarks" / "harness.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))  # spawned benchmark workers import it by this path too
            return importlib.import_module("benchmarks.harness")
    from .errors import ConfigError

    raise ConfigError("the peer benchmark ships with mlm-export's source repository, not with the "
                      "installed package: run `mlm-export bench` from a checkout of the repository")


if __name__ == "__main__":  # pragma: no cover
    main()
