"""What a scoring engine (local, Ray) hands back: rows in input order, each with its variant and provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..runtime.scoring import PLLScore, RowError, ScoreOptions, Scorer
from .inputs import InputRow
from .outputs import ScoredRow


@dataclass(frozen=True)
class EngineRun:
    """An engine, started: what it scores with, and the scored rows in input order, in chunks."""

    variant: str
    provider: str
    chunks: Iterator[list[ScoredRow]]
    close: Callable[[], None] | None = None  # stops what the engine started (a local Ray instance)


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
