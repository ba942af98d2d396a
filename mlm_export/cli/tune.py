"""`mlm-export tune DIRECTORY`: time the artifact's variants on this machine; `auto` then runs the fastest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..runtime.threads import max_threads
from ._common import command, common_options, quiet_option, _out

if TYPE_CHECKING:
    from ..runtime.tuning_records import TuningRecord


@command("tune")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--task", "tasks", multiple=True, type=click.Choice(["fill-mask", "sparse", "embed"]),
              help="A task to tune (repeatable); default: every task the artifact has.")
@click.option("--threads", type=click.IntRange(1, max_threads()),
              help="Inference threads to time with (default: what the runtime picks, or MLM_EXPORT_THREADS).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per workload and round (PLL: a third of them).")
@click.option("--forget", is_flag=True, help="Remove this machine's record for the artifact (only the --task ones "
                                              "when given) instead: the policy table decides again.")
@quiet_option
@common_options
def tune_command(directory: Path, tasks: tuple[str, ...], threads: int | None, repeats: int, forget: bool,
                 quiet: bool, as_json: bool) -> None:
    """Time each variant in DIRECTORY that runs on this CPU on the artifact's own workloads (one text, 32 texts,
    a PLL) and record the fastest whose gate passed in your cache (MLM_EXPORT_CACHE, else ~/.cache/mlm-export),
    keyed by the manifest's sha256 and the CPU model; the artifact is not touched. providers="auto" (predict,
    score, encode, serve, the Python classes) then opens that variant on this machine; `info` says so."""
    from ..tuning import TuneOptions, forget as forget_record, tune

    if forget:
        if threads is not None or repeats != 5:
            raise click.UsageError("--forget removes a record: it takes no --threads or --repeats")
        path, removed = forget_record(directory, tasks)
        what = ", ".join(removed)
        _out().result("tune", {"path": str(path) if path else None, "forgot": list(removed)},
                      f"removed {what} from {path}" if removed else
                      "no tuning record for this artifact on this machine" + (f" for {', '.join(tasks)}" if tasks
                                                                              else ""))
        return
    result = tune(directory, TuneOptions(tasks=tasks, threads=threads, repeats=repeats))
    tuned = list(tasks or result.record.tasks)
    skipped = "".join(f"\nnot timed: {name} ({why})" for name, why in result.skipped.items())
    _out().result("tune", result.to_dict(), f"{_table(result.record, tuned)}{skipped}\nrecorded in {result.path}")


def _table(record: TuningRecord, tasks: list[str]) -> str:
    """Per task: each variant's medians and its time relative to the fastest per workload, the winner marked."""
    lines = [f"CPU: {record.cpu_model} ({record.cpu_class})"]
    for task in tasks:
        tuned = record.tasks[task]
        workloads = list(tuned.timings[0].median_ms)
        lines.append(f"{task}: " + " | ".join(["variant", "backend", *[f"{w} ms" for w in workloads], "relative"]))
        for t in sorted(tuned.timings, key=lambda t: t.relative):
            mark = "  <- default here" if t.variant == tuned.winner else ""
            lines.append("  " + " | ".join([t.variant, t.backend.replace("ExecutionProvider", ""),
                                            *[f"{t.median_ms[w]:.1f}" for w in workloads],
                                            f"{t.relative:.2f}x"]) + mark)
    return "\n".join(lines)
