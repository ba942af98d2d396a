"""Batch encoding (`mlm-export encode`): the sparse vectors or embeddings of every sequence of a file.

Inputs are read exactly as `score` reads them (inputs.py: text, FASTA, CSV, Parquet, kept columns);
rows go out in input order (vectors.py), each naming the variant and provider that encoded it. A
sequence that cannot be encoded (empty, longer than the model takes without `truncate`) is a row with
`error` set, or with `strict` the end of the run with nothing written.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..progress import is_terminal
from .engine import EngineRun, drain
from .inputs import FORMATS, InputRow, chunked, read_rows
from .vectors import VECTOR_FIELDS, EncodedRow, VectorWriter

log = logging.getLogger("mlm_export")
TASKS = ("sparse", "embed")
POOLINGS = ("mean", "cls", "none")
CHUNK = 256  # sequences encoded between writes and progress updates
ERRORS_SHOWN = 5


@dataclass(frozen=True)
class EncodeJob:
    """What to encode, with what, and where the rows go."""

    artifact: Path
    input: Path
    task: str | None = None         # sparse or embed; None: the one of the two the artifact has
    output: Path | None = None      # None: JSON Lines on stdout
    column: str | None = None
    variant: str | None = None
    providers: str = "auto"
    threads: int | None = None
    batch_size: int = 32
    top_k: int | None = None        # sparse: the heaviest terms only
    threshold: float = 0.0          # sparse: terms weighing more than this
    pooling: str | None = None      # embed: mean (the default), cls or none (per token)
    truncate: bool = False          # keep a long sequence's first tokens instead of refusing it
    strict: bool = False
    force: bool = False
    public_key: Path | None = None
    keep_columns: tuple[str, ...] | None = None
    format: str | None = None
    engine: str = "local"           # or "ray", as for score
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance
    workers: int | None = None      # Ray actors; default: the cluster's CPUs / threads
    progress: bool = True           # Ray Data's own bars and INFO lines

    def __post_init__(self) -> None:
        for name in ("artifact", "input", "output", "public_key"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise InputError(f"EncodeJob.{name} must be a path, got {type(value).__name__}")
        if self.task is not None and self.task not in TASKS:
            raise InputError(f"EncodeJob.task must be sparse, embed or None, got {self.task!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise InputError(f"EncodeJob.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.format is not None and self.format not in FORMATS:
            raise InputError(f"EncodeJob.format must be one of {', '.join(FORMATS)} or None, got {self.format!r}")
        if self.engine not in ("local", "ray"):
            raise InputError(f"EncodeJob.engine must be local or ray, got {self.engine!r}")
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"EncodeJob.{name} must be a positive integer or None, got {value!r}")
        for name in ("strict", "force", "truncate", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"EncodeJob.{name} must be True or False, got {getattr(self, name)!r}")
        keep = self.keep_columns
        if keep is not None:
            if isinstance(keep, str) or not all(isinstance(k, str) for k in keep):
                raise InputError(f"EncodeJob.keep_columns must be a sequence of column names or None, got {keep!r}")
            object.__setattr__(self, "keep_columns", tuple(keep))


@dataclass
class EncodeSummary:
    """How a run went: rows in, rows encoded, and the bad rows (line and reason)."""

    output: str | None
    task: str
    variant: str
    provider: str
    engine: str = "local"
    rows: int = 0
    encoded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "engine": self.engine, "task": self.task, "variant": self.variant,
                "provider": self.provider,
                "rows": self.rows, "encoded": self.encoded,
                "failed": [{"line": n, "error": e} for n, e in self.failed], "seconds": round(self.seconds, 3),
                "sequences_per_second": round(self.rows / self.seconds, 2) if self.seconds else None}


def encode_file(job: EncodeJob, stdout: IO[str] | None = None) -> EncodeSummary:
    """Encode every sequence of `job.input` into `job.output` (or JSON Lines on `stdout`), in input order."""
    from ..artifact.handle import Artifact
    from ..runtime.embed import Embedder
    from ..runtime.sparse import SparseEncoder

    artifact = Artifact.open(job.artifact, job.public_key)
    task = job.task or _only_task(artifact)
    if task == "sparse" and job.pooling is not None:
        raise InputError("pooling is the embed task's; a sparse vector is pooled as the artifact was exported")
    if task == "embed" and (job.top_k is not None or job.threshold):
        raise InputError("top_k and threshold are the sparse task's; leave them out with the embed task")
    options: dict[str, Any] = ({"top_k": job.top_k, "threshold": job.threshold, "truncate": job.truncate,
                                "batch_size": job.batch_size} if task == "sparse" else
                               {"pooling": job.pooling or "mean", "truncate": job.truncate,
                                "batch_size": job.batch_size})
    model: SparseEncoder | Embedder | None = None
    if job.engine == "local":  # the Ray engine checks its variant in the driver, and opens it in each actor
        model = (SparseEncoder if task == "sparse" else Embedder).from_pretrained(
            artifact, variant=job.variant, providers=job.providers, threads=job.threads, batch_size=job.batch_size)
    table = read_rows(job.input, job.column, job.keep_columns, job.format, reserved=VECTOR_FIELDS)
    try:
        writer = VectorWriter(job.output, task, job.pooling == "none", artifact.manifest.model.hidden_size,
                              job.force, stdout, job.input, table.kept, table.kept_types)
    except BaseException:
        table.close()
        raise
    run: EngineRun | None = None
    try:
        if model is not None:
            run = EngineRun(model.variant, model.provider,
                            (_encode(model, task, chunk, options) for chunk in chunked(table.rows, CHUNK)))
        else:
            from .ray_engine import encode_with_ray

            run = encode_with_ray(job, table.rows, task, options)
        summary = EncodeSummary(None if job.output is None else str(job.output), task, run.variant, run.provider,
                                engine=job.engine)
        on_terminal = job.output is None and is_terminal(stdout if stdout is not None else sys.stdout)
        summary.seconds = drain(run, writer, lambda rows: _check(rows, job, summary), f"encoding ({task})",
                                bar=not on_terminal)
    except BaseException:
        writer.abort()
        raise
    finally:
        table.close()
        if run is not None and run.close is not None:
            run.close()  # on an error or a signal too: no Ray process of ours outlives the run
    return summary


def _only_task(artifact: Any) -> str:
    tasks = [task for task in TASKS if artifact.graphs_of(task)]
    if len(tasks) == 1:
        return tasks[0]
    if not tasks:
        raise InputError(f"{artifact.path} has no sparse or embed graph: export it with --task sparse or --task embed")
    raise InputError(f"{artifact.path} has both a sparse and an embed graph: say which with --task")


def _encode(model: Any, task: str, rows: list[InputRow], options: dict[str, Any]) -> list[EncodedRow]:
    texts = [r.text for r in rows if r.error is None]
    results = iter(model.encode_rows(texts, **options))
    out = []
    for row in rows:
        common = {"variant": model.variant, "provider": model.provider, "kept": row.kept}
        if row.error is not None:
            out.append(EncodedRow(row.line, row.text, None, error=row.error, **common))
            continue
        result = next(results)
        if result.error is not None:
            out.append(EncodedRow(row.line, row.text, None, error=f"the sequence {result.error}", **common))
        elif task == "sparse":
            out.append(EncodedRow(row.line, row.text, result.n_tokens, indices=result.value.indices,
                                  values=result.value.values, **common))
        else:
            out.append(EncodedRow(row.line, row.text, result.n_tokens, embedding=result.value, **common))
    return out


def _check(rows: list[EncodedRow], job: EncodeJob, summary: EncodeSummary) -> None:
    for row in rows:
        summary.rows += 1
        if row.error is None:
            summary.encoded += 1
            continue
        if job.strict:
            raise InputError(f"{job.input}, line {row.line}: {row.error} (--strict stops at the first bad row)")
        summary.failed.append((row.line, row.error))
        if len(summary.failed) <= ERRORS_SHOWN:
            log.warning("line %d not encoded: %s", row.line, row.error)
