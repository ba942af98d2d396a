"""`mlm-export info DIRECTORY`: what an artifact holds, as a table or as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..manifest import TASK_FORMS, GraphEntry, ParityRecord, Tolerance, VectorParity, VectorTolerance
from ._common import command, common_options, _out


@command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@common_options
def info_command(directory: Path, as_json: bool) -> None:
    """Show what an artifact holds: source, and per graph its size, fusion and parity."""
    from ..artifact.handle import Artifact
    from ..artifact.signature import signature_fingerprint
    from ..runtime.backends import choose_backend
    from ..runtime.defaults import default_choice

    artifact = Artifact.open(directory)
    manifest, absent = artifact.manifest, artifact.left_out  # a slim copy: some graphs left out
    provider = choose_backend(artifact.graphs_of("fill-mask"), "auto")
    default = None
    defaults = {}  # per task: the graph each task's class opens with providers="auto", and why
    for task in manifest.tasks:
        graphs = artifact.graphs_of(task)
        if graphs:
            choice = default_choice(artifact.manifest_bytes, graphs, task)
            defaults[task] = {"provider": choice.backend, "variant": choice.variant, "reason": choice.reason,
                              "tuned": choice.tuned}
            if task == "fill-mask":
                provider, default = choice.backend, choice.variant
    signed = signature_fingerprint(directory)
    if as_json:
        _out().result("info", manifest.to_dict() | {"default_variant": {"provider": provider, "variant": default},
                                                    "default_variants": defaults,
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
        "  default variant here: " + ("; ".join(f"{d['variant']} ({d['provider']})" for d in defaults.values())
                                      or f"none (no fill-mask graph) ({provider})"),
        *(f"    why {task}: {d['reason']}" for task, d in defaults.items()),
        f"  signature: {'signed, key fingerprint ' + signed + ' (check it with verify --key)' if signed else 'none'}",
    ]
    if absent:
        lines.append(f"  slim copy: {', '.join(absent)} left out (listed below, not on disk)")
    def size_of(graph: Any) -> int:  # with its external data, where it has some
        return manifest.files[graph.file].size + (manifest.files[graph.data_file].size if graph.data_file else 0)

    fp32_size = size_of(manifest.graphs.get("fp32") or next(iter(manifest.graphs.values()))) or 1
    rows: list[tuple[str, ...]] = [("graph", "file", "MB", "%fp32", "attention", "gated on", "positions", "max|Δlogit|",
             "top1", "top5-ovl", "top5-set", "provider", "gate")]
    for name, g in manifest.graphs.items():
        if g.form in TASK_FORMS:
            continue  # their own table, below
        size = size_of(g)
        fusion, p = g.fusion, g.parity
        if fusion is None:
            attention = "-"
        elif fusion.mode == "none":
            attention = "none"
        else:
            attention = f"{fusion.attention}/{fusion.expected_attention}"
        if p is None:
            figures = ["-", "-", "-", "-", "-", "-", "-"]
        else:
            assert isinstance(p, ParityRecord)
            figures = [p.gated_on or "-", str(p.masked_positions),
                       "-" if p.max_abs_logit is None else f"{p.max_abs_logit:.2e}", f"{p.top1_agreement:.2%}",
                       f"{p.topk_overlap:.2%}", f"{p.topk_set_equal:.2%}",
                       (p.provider or "-").replace("ExecutionProvider", "")]
        gate = "absent (slim)" if name in absent else "not verified" if p is None else "pass" if p.passed else "FAIL"
        rows.append((name, g.file, f"{size / 1e6:.1f}", f"{100 * size / fp32_size:.0f}%", attention, *figures,
                     gate))
    lines += _table(rows)
    tasks = {name: g for name, g in manifest.graphs.items() if g.form in TASK_FORMS}
    if tasks:
        lines += _table(_task_rows(tasks, absent, size_of, fp32_size))
    lines.append("  gates: " + "; ".join(f"{name} {_gate(g.tolerance)}" for name, g in manifest.graphs.items()))
    bf16 = manifest.graphs.get("bf16")
    if bf16 and bf16.head_input:
        lines.append(f"  bf16 runs on OpenVINO (--providers openvino): the encoder in bf16, the MLM head in float32 "
                     f"from {bf16.head_input}")
    int8 = manifest.graphs.get("int8")
    if int8 and int8.recipe:
        tried = ", ".join(f"{t.recipe}{' + int8-blockwise decoder' if t.head == 'int8-blockwise' else ''} "
                          f"{'pass' if t.passed else 'fail'} (top1 {t.top1_agreement:.2%}, "
                          f"overlap {t.topk_overlap:.2%})" for t in int8.recipes_tried)
        how = f"; tried {tried}" if tried else " (chosen by hand)"
        head = f", {int8.head} MLM decoder" if int8.head else ""
        lines.append(f"  quantization recipe for int8: {int8.recipe}{head}{how}")
    _out().echo("\n".join(lines))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _task_rows(tasks: dict[str, GraphEntry], absent: tuple[str, ...], size_of: Any,
               fp32_size: int) -> list[tuple[str, ...]]:
    """The sparse and embed graphs: what each computes and its gate's figures."""
    rows: list[tuple[str, ...]] = [("graph", "file", "MB", "%fp32", "computes", "gated on", "texts", "max|Δ|",
                                    "min cos", "top-k ovl", "provider", "gate")]
    for name, g in tasks.items():
        size = size_of(g)
        task = g.task
        computes = (f"{task.pooling} pooling" if g.form == "sparse" else f"layer {task.layer}") if task else "-"
        if g.recipe:
            computes += f", int8 {g.recipe}" + (f", {g.head} decoder" if g.head else "")
        p = g.parity
        if p is None:
            figures = ["-"] * 6
        else:
            assert isinstance(p, VectorParity)
            overlap = p.figures.get("topk_overlap")
            figures = [p.gated_on or "-", str(p.texts), f"{p.max_abs:.2e}", f"{p.min_cosine:.6f}",
                       "-" if overlap is None else f"{overlap:.2%}",
                       (p.provider or "-").replace("ExecutionProvider", "")]
        gate = "absent (slim)" if name in absent else "not verified" if p is None else "pass" if p.passed else "FAIL"
        rows.append((name, g.file, f"{size / 1e6:.1f}", f"{100 * size / fp32_size:.0f}%", computes, *figures, gate))
    return rows


def _gate(t: Tolerance | VectorTolerance) -> str:
    if isinstance(t, VectorTolerance):
        return ", ".join(filter(None, [
            f"max|Δ|<={t.max_abs:g}" if t.max_abs is not None else "",
            f"cosine>={t.min_cosine:g}" if t.min_cosine is not None else "",
            f"token cosine>={t.min_token_cosine:g}" if t.min_token_cosine is not None else "",
            f"top{t.top_k}-overlap>={t.min_topk_overlap:.0%}" if t.min_topk_overlap is not None else ""]))
    return ", ".join(filter(None, [
        (f"max|Δlogit|<={t.max_abs_logit:g}" + (f" or {t.max_rel_logit:g}x max|logit|" if t.max_rel_logit else ""))
        if t.max_abs_logit is not None else "",
        f"top1>={t.min_top1_agreement:.1%}", f"top{t.top_k}-overlap>={t.min_topk_overlap:.0%}",
        f"max|Δprob|<={t.max_abs_prob:g}" if t.max_abs_prob is not None else ""]))
