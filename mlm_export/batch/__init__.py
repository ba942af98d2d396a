"""Batch jobs on files of sequences, on this machine or on Ray: scoring (pseudo-log-likelihoods, here) and
encoding (SPLADE vectors, embeddings: encoding.py).

    inputs.py      read text/FASTA/CSV/Parquet as a stream, checked before the first row
    outputs.py     write scored JSON Lines/Parquet rows, whole or not at all
    vectors.py     write encoded rows: JSON Lines, Parquet, .npy, .h5
    encoding.py    EncodeJob and encode_file (`mlm-export encode`)
    engine.py      what an engine hands back: scored rows in input order, with variant and provider
    ray_engine.py  the same scorer or encoder as a Ray Data actor pool (`engine="ray"`)

Both engines give the same rows: a sequence's score depends only on the sequence (see
`runtime.scoring`), never on its batch or its worker. Every row names the variant and the provider
that scored it, and carries the input's kept columns (ids), so nobody joins back on line numbers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..progress import is_terminal
from ..runtime.scoring import ScoreOptions
from .engine import EngineRun, drain, score_rows
from .inputs import FORMATS, InputRow, chunked, read_rows
from .outputs import OUTPUT_FIELDS, RowWriter, ScoredRow

log = logging.getLogger("mlm_export")
ENGINES = ("local", "ray")
CHUNK = 64  # sequences scored between writes and progress updates
WARNINGS_SHOWN = 5  # rows with a warning logged one by one; the rest are counted in the summary
WARNINGS_KEPT = 100  # rows with a warning listed in the summary; `warned_rows` counts them all


@dataclass(frozen=True)
class ScoreJob:
    """What to score, with what, and where the rows go."""

    artifact: Path
    input: Path
    output: Path | None = None      # None: JSON Lines on stdout
    column: str | None = None
    options: ScoreOptions = field(default_factory=ScoreOptions)
    variant: str | None = None
    providers: str = "auto"
    threads: int | None = None
    strict: bool = False            # the first bad row ends the run (nothing is written)
    force: bool = False             # replace an existing output file
    engine: str = "local"
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance
    workers: int | None = None      # Ray actors; default: the cluster's CPUs / threads
    progress: bool = True           # Ray Data's own bars and INFO lines (ours follow progress.live_bars)
    public_key: Path | None = None  # refuse an artifact without a valid signature
    keep_columns: tuple[str, ...] | None = None  # input columns copied to the output; None: all of them
    format: str | None = None       # text, fasta, csv or parquet; None: from the input's suffix

    def __post_init__(self) -> None:
        """Paths may be given as strings, as a user writes them; stored as `Path`s."""
        for name in ("artifact", "input", "output", "public_key"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise InputError(f"ScoreJob.{name} must be a path, got {type(value).__name__}")
        if not isinstance(self.options, ScoreOptions):
            raise InputError(f"ScoreJob.options must be a ScoreOptions, got {type(self.options).__name__}")
        for name in ("strict", "force", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"ScoreJob.{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"ScoreJob.{name} must be a positive integer or None, got {value!r}")
        keep = self.keep_columns
        if keep is not None:
            if isinstance(keep, str) or not all(isinstance(k, str) for k in keep):
                raise InputError(f"ScoreJob.keep_columns must be a sequence of column names or None, got {keep!r}")
            object.__setattr__(self, "keep_columns", tuple(keep))
        if self.format is not None and self.format not in FORMATS:
            raise InputError(f"ScoreJob.format must be one of {', '.join(FORMATS)} or None, got {self.format!r}")


@dataclass
class ScoreSummary:
    """How a run went: rows in, rows scored, the bad rows and the doubtful ones (line and reason)."""

    output: str | None
    engine: str
    variant: str
    provider: str
    rows: int = 0
    scored: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    warned: list[tuple[int, str]] = field(default_factory=list)  # the first WARNINGS_KEPT rows with a warning
    warned_rows: int = 0  # scored, but more than `max_unknown` of their tokens unknown to the model
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "engine": self.engine, "variant": self.variant, "provider": self.provider,
                "rows": self.rows, "scored": self.scored,
                "failed": [{"line": n, "error": e} for n, e in self.failed],
                "warned": [{"line": n, "warning": w} for n, w in self.warned], "warned_rows": self.warned_rows,
                "seconds": round(self.seconds, 3),
                "sequences_per_second": round(self.rows / self.seconds, 2) if self.seconds else None}


def score_file(job: ScoreJob, stdout: IO[str] | None = None) -> ScoreSummary:
    """Score every sequence of `job.input` into `job.output` (or JSON Lines on `stdout`), in input order.

    A bad row (empty, too long, holding the mask token) becomes a row with `error` set and a
    warning naming its line; with `strict` it raises `InputError` and no output file is written
    (rows already streamed to stdout stay printed).
    """
    if job.engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {job.engine!r}")
    # the input is checked before anything is created
    table = read_rows(job.input, job.column, job.keep_columns, job.format, reserved=OUTPUT_FIELDS)
    try:
        writer = RowWriter(job.output, job.options.per_token, job.force, stdout, source=job.input,
                           kept=table.kept, kept_types=table.kept_types)
    except BaseException:
        table.close()
        raise
    run: EngineRun | None = None
    try:
        if job.engine == "ray":
            from .ray_engine import score_with_ray

            run = score_with_ray(job, table.rows)
        else:
            run = _score_locally(job, table.rows)
        summary = ScoreSummary(None if job.output is None else str(job.output), job.engine, run.variant,
                               run.provider)
        rows_on_terminal = job.output is None and is_terminal(stdout if stdout is not None else sys.stdout)
        # timed from here: the artifact is open (Ray starts on the first rows)
        summary.seconds = drain(run, writer, lambda chunk: _check(chunk, job, summary), "scoring",
                                bar=not rows_on_terminal)
    except BaseException:
        writer.abort()
        raise
    finally:
        table.close()
        if run is not None and run.close is not None:
            run.close()  # on an error or a signal too: no Ray process of ours outlives the run
    return summary


def _check(chunk: list[ScoredRow], job: ScoreJob, summary: ScoreSummary) -> None:
    for row in chunk:
        summary.rows += 1
        if row.error is None:
            summary.scored += 1
            if row.warning is not None:
                if job.strict:
                    raise InputError(f"{job.input}, line {row.line}: {row.warning} (--strict refuses a sequence "
                                     f"that is more than {job.options.max_unknown:.0%} unknown tokens)")
                summary.warned_rows += 1
                if summary.warned_rows <= WARNINGS_KEPT:
                    summary.warned.append((row.line, row.warning))
                if summary.warned_rows <= WARNINGS_SHOWN:
                    log.warning("line %d: %s", row.line, row.warning)
            continue
        if job.strict:
            raise InputError(f"{job.input}, line {row.line}: {row.error} (--strict stops at the first bad row)")
        summary.failed.append((row.line, row.error))
        log.warning("line %d not scored: %s", row.line, row.error)


def _score_locally(job: ScoreJob, rows: Iterable[InputRow]) -> EngineRun:
    from ..runtime.predictor import OnnxMaskFiller

    filler = OnnxMaskFiller.from_pretrained(job.artifact, variant=job.variant, providers=job.providers,
                                            threads=job.threads, public_key=job.public_key)
    scorer = filler.scorer()

    def chunks() -> Iterator[list[ScoredRow]]:
        for chunk in chunked(rows, CHUNK):
            yield score_rows(scorer, chunk, job.options, filler.variant, filler.provider)

    return EngineRun(filler.variant, filler.provider, chunks())
