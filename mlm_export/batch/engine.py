"""What an engine (local, Ray) hands back: rows in input order, each with its variant and provider; and the
one loop that writes them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..runtime.scoring import PLLScore, RowError, ScoreOptions, Scorer
from .inputs import InputRow
from ..progress import stage
from .outputs import RowFile, ScoredRow


@dataclass(frozen=True)
class EngineRun:
    """An engine, started: what it runs with, and its rows in input order, in chunks (`ScoredRow`s for
    score, `EncodedRow`s for encode)."""

    variant: str
    provider: str
    chunks: Iterator[list[Any]]
    close: Callable[[], None] | None = None  # stops what the engine started (a local Ray instance)


def drain(run: EngineRun, writer: RowFile, check: Callable[[list[Any]], None], label: str, bar: bool) -> float:
    """Write the run's rows as they come, each chunk checked first (which may end the run), then publish the
    output; returns the seconds the rows took. The caller aborts the writer and closes the run on error."""
    start = time.perf_counter()
    with stage(label, unit="seq", lines=False, bar=bar) as advance:  # the command prints its own summary
        for chunk in run.chunks:
            check(chunk)
            writer.write(chunk)
            advance(len(chunk))
    seconds = time.perf_counter() - start
    writer.close()
    return seconds


def to_scored_row(row: InputRow, result: PLLScore | RowError, variant: str, provider: str) -> ScoredRow:
    if isinstance(result, RowError):
        return ScoredRow(row.line, result.text, None, None, None, result.message, variant=variant,
                         provider=provider, kept=row.kept)
    return ScoredRow(row.line, result.text, result.pll, result.n_tokens, result.token_log_probs, None,
                     result.unknown_tokens, result.warning, variant, provider, row.kept)


def score_rows(scorer: Scorer, rows: list[InputRow], options: ScoreOptions, variant: str,
               provider: str) -> list[ScoredRow]:
    """Score a chunk of rows; a row the reader already found bad is reported, not scored."""
    results = iter(scorer.score_rows([r.text for r in rows if r.error is None], options))
    return [to_scored_row(r, RowError(0, r.text, r.error) if r.error is not None else next(results), variant,
                          provider) for r in rows]
