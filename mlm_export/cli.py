"""Command line: parses arguments and calls the library; no pipeline logic lives here.

Exit codes: 0 success, 1 error, 2 usage, 3 parity failure.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable

import click

from .errors import MlmExportError
from .precision import INT8_RECIPE_NAMES

PARITY_EXIT = 3


class _DefaultToExport(click.Group):
    """`mlm-export MODEL ...` means `mlm-export export MODEL ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["export", *args]
        return super().parse_args(ctx, args)


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


def _run(action: Callable[[], Any]) -> Any:
    """Turn library errors into a one-line message on stderr and the documented exit code."""
    try:
        return action()
    except MlmExportError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")


@click.group(cls=_DefaultToExport, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlm-export")
def main() -> None:
    """Export a BERT masked language model to a verified, optimized ONNX artifact, and serve it.

    \b
    mlm-export MODEL [OPTIONS]       same as `mlm-export export MODEL`
    MODEL is a local Hugging Face directory, a hub id, or the built-in name `antiberty`.
    """


@main.command("export")
@click.argument("model")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Artifact directory [models/<name>].")
@click.option("--force", is_flag=True, help="Replace an existing artifact directory.")
@click.option("--revision", help="Hub revision (branch, tag or commit) for a hub id.")
@click.option("--opset", type=click.IntRange(17, None), default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="Add an fp16 fill-mask variant (for the CUDA provider).")
@click.option("--int8", is_flag=True, help="Add an int8 fill-mask variant (for the CPU provider).")
@click.option("--int8-recipe", type=click.Choice(("auto",) + INT8_RECIPE_NAMES), default="auto",
              show_default=True,
              help="int8 quantization recipe (implies --int8); auto keeps the fastest that passes the gate.")
@click.option("--allow-unfused", is_flag=True,
              help="Export even if attention did not fuse in every layer (recorded in the manifest).")
@json_option
@quiet_option
def export_command(model: str, out: Path | None, force: bool, revision: str | None, opset: int,
                   fp16: bool, int8: bool, int8_recipe: str, allow_unfused: bool, as_json: bool,
                   quiet: bool) -> None:
    """Export MODEL, fuse it, verify every graph against PyTorch, and write the artifact."""
    from .config import ExportConfig
    from .errors import ParityError
    from .pipeline import export_model

    _setup_logging(quiet)
    config = ExportConfig(model=model, out=out, revision=revision, force=force,
                          allow_unfused=allow_unfused, opset=opset, fp16=fp16,
                          int8=int8 or int8_recipe != "auto", int8_recipe=int8_recipe)
    try:
        result = export_model(config)
    except ParityError as exc:
        if as_json and exc.report is not None:
            click.echo(json.dumps(exc.report.to_dict(), indent=2))
        click.echo(f"Error: {exc}", err=True)
        sys.exit(PARITY_EXIT)
    except MlmExportError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    _emit(as_json, {"path": str(result.path), "manifest": result.manifest},
          f"{result.report.summary()}\nwrote {result.path}")


@main.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--source", help="Model to compare against, if not the one recorded in the manifest.")
@click.option("--probe-file", type=click.File("r", encoding="utf-8"),
              help="Realistic probe texts, one per line, used instead of the packaged set.")
@click.option("--providers", default="cpu", show_default=True, help="cpu, cuda or auto.")
@json_option
@quiet_option
def verify_command(directory: Path, source: str | None, probe_file: Any, providers: str,
                   as_json: bool, quiet: bool) -> None:
    """Check file hashes, then compare every graph in DIRECTORY with a fresh PyTorch model."""
    from .verify import verify_artifact

    _setup_logging(quiet)
    texts = [line.strip() for line in probe_file if line.strip()] if probe_file else None
    report = _run(lambda: verify_artifact(directory, source=source, providers=providers, probe_texts=texts))
    _emit(as_json, report.to_dict(), report.summary())
    if not report.passed:
        click.echo("Error: parity check failed", err=True)
        sys.exit(PARITY_EXIT)


@main.command("predict")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--top-k", "-k", type=click.IntRange(1, None), default=5, show_default=True)
@click.option("--variant", help="Graph variant (e.g. fp32); default: best for the provider.")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu or cuda.")
@json_option
def predict_command(directory: Path, texts: tuple[str, ...], top_k: int, variant: str | None,
                    providers: str, as_json: bool) -> None:
    """Fill the [MASK] tokens of each TEXT with the artifact in DIRECTORY."""
    from .predictor import OnnxMaskFiller

    filler = _run(lambda: OnnxMaskFiller.from_pretrained(directory, variant=variant, providers=providers))
    results = _run(lambda: filler(list(texts), top_k=top_k))
    if as_json:
        click.echo(json.dumps({"variant": filler.variant, "provider": filler.provider,
                               "results": results}, indent=2))
        return
    for text, result in zip(texts, results):
        click.echo(text)
        masks = [result] if result and isinstance(result[0], dict) else result
        for n, candidates in enumerate(masks, 1):
            if len(masks) > 1:
                click.echo(f"  mask {n}:")
            for rank, c in enumerate(candidates, 1):
                click.echo(f"  {rank:>2}. {c['token_str']:<12} {c['score']:.4f}  {c['sequence']}")


@main.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@json_option
def info_command(directory: Path, as_json: bool) -> None:
    """Show what an artifact holds: source, and per graph its size, fusion and parity."""
    from .artifact import read_manifest
    from .predictor import preferred_variant
    from .providers import requested_providers

    manifest = _run(lambda: read_manifest(directory))
    provider = _run(lambda: requested_providers("auto")[0])
    default = preferred_variant(manifest, provider)
    if as_json:
        click.echo(json.dumps(manifest | {"default_variant": {"provider": provider,
                                                              "variant": default}}, indent=2))
        return
    src, model = manifest["source"], manifest["model"]
    click.echo(f"{manifest['name']}  ({src['kind']}: {src['location']})")
    click.echo(f"  {model['num_layers']} layers, hidden {model['hidden_size']}, vocab "
               f"{model['vocab_size']}, max length {model['max_length']}, "
               f"{model['float32_parameter_bytes'] / 1e6:.1f} MB float32 parameters")
    click.echo(f"  opset {manifest['opset']}; " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    click.echo(f"  realistic probe set: {manifest.get('probe_set') or 'none (synthetic probes only)'}")
    click.echo(f"  default variant here: {default} ({provider})")
    fp32_size = manifest["files"][manifest["graphs"]["fp32"]["file"]]["size"]
    rows = [("graph", "file", "MB", "%fp32", "attention", "gated on", "positions", "max|Δlogit|",
             "top1", "top5-ovl", "top5-set", "provider", "gate")]
    for name, g in manifest["graphs"].items():
        size = manifest["files"][g["file"]]["size"]
        fusion = g.get("fusion")
        p = g.get("parity") or {}
        rows.append((
            name, g["file"], f"{size / 1e6:.1f}", f"{100 * size / fp32_size:.0f}%",
            f"{fusion['attention']}/{fusion['expected_attention']}" if fusion else "-",
            p.get("gated_on", "-"), str(p.get("masked_positions", "-")),
            f"{p['max_abs_logit']:.2e}" if p else "-",
            f"{p['top1_agreement']:.2%}" if p else "-", f"{p['topk_overlap']:.2%}" if p else "-",
            f"{p['topk_set_equal']:.2%}" if p else "-",
            p.get("provider", "-").replace("ExecutionProvider", ""),
            ("pass" if p.get("passed") else "FAIL") if p else "not verified"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    tolerances = {name: g["tolerance"] for name, g in manifest["graphs"].items()}
    click.echo("  gates: " + "; ".join(
        f"{name} " + ", ".join(filter(None, [
            f"max|Δlogit|<={t['max_abs_logit']:g}" if t.get("max_abs_logit") is not None else "",
            f"top1>={t['min_top1_agreement']:.1%}", f"top{t['top_k']}-overlap>={t['min_topk_overlap']:.0%}"]))
        for name, t in tolerances.items()))
    int8 = manifest["graphs"].get("int8")
    if int8 and int8.get("recipe"):
        tried = ", ".join(f"{t['recipe']} {'pass' if t['passed'] else 'fail'} (top1 {t['top1_agreement']:.2%}, "
                          f"overlap {t['topk_overlap']:.2%})" for t in int8.get("recipes_tried", []))
        how = f"; tried {tried}" if tried else " (chosen by hand)"
        click.echo(f"  quantization recipe for int8: {int8['recipe']}{how}")


@main.command("bench")
@click.option("--model", "models", multiple=True,
              help="bert-base, antiberty or a local model directory (repeatable) [bert-base, antiberty].")
@click.option("--system", "systems", multiple=True, help="Limit to these systems (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/work"), show_default=True,
              help="Cache for the exported models the systems load.")
@click.option("--threads", type=click.IntRange(1, None), default=2, show_default=True)
@click.option("--rounds", "round_scale", type=click.FloatRange(0.01, None), default=1.0, show_default=True,
              help="Scale every workload's number of timed rounds.")
@json_option
@quiet_option
def bench_command(models: tuple[str, ...], systems: tuple[str, ...], out: Path, work: Path, threads: int,
                  round_scale: float, as_json: bool, quiet: bool) -> None:
    """Time OnnxMaskFiller against transformers, torch bf16 and optimum, side by side."""
    from .bench import SYSTEMS, BenchConfig, run_benchmark

    _setup_logging(quiet)
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise click.BadParameter(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}",
                                 param_hint="--system")
    config = BenchConfig(models=models or ("bert-base", "antiberty"), systems=systems or SYSTEMS,
                         out=out, work=work, threads=threads, round_scale=round_scale)
    summary = _run(lambda: run_benchmark(config))
    _emit(as_json, {k: v for k, v in summary.items() if k != "table"},
          f"{summary['table']}\nwrote {out / 'bench.json'}, {out / 'bench.md'}"
          + (f", {summary['chart']}" if summary["chart"] else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
